"""The in-process server the serving tests run: serve_async on a thread of its own, REST and gRPC on
free ports of 127.0.0.1, its scheduler and connections at hand so tests can watch them."""
import asyncio
import os
import socket
import threading
import time

import pytest
import requests

from components.push import push
from serving import server
from serving.batching import BatchingOptions, BatchScheduler
from serving.limits import ServerLimits
from serving.servables import ServableManager
from common import features


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loaded_manager(model_dir: str, base: str) -> ServableManager:
    """Version 1 (`model_dir` pushed under `base`), loaded."""
    push(model_dir, base)
    manager = ServableManager(os.path.join(base, features.MODEL_NAME))
    manager.poll()
    return manager


def wait_until(predicate, what: str, timeout: float = 120) -> None:
    """Waits for a condition (not for a time): `timeout` only ends a test that would hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Server:
    """serve_async on a thread of its own, REST and gRPC on free ports, model calls counted by its scheduler."""

    def __init__(self, manager: ServableManager, limits: ServerLimits = ServerLimits(), poll_seconds: float = 3600,
                 **options):
        self.manager = manager
        self.limits = limits
        self.poll_seconds = poll_seconds
        self.scheduler = BatchScheduler(BatchingOptions(**options))
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}/v1/models/{features.MODEL_NAME}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self._started = threading.Event()

    def __enter__(self):
        def run():
            async def main():
                self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
                self._started.set()
                await server.serve_async(self.manager, rest_port=self.rest_port, grpc_port=self.grpc_port,
                                         poll_seconds=self.poll_seconds, scheduler=self.scheduler, limits=self.limits,
                                         stop=self.stop)

            asyncio.run(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self._started.wait(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url, timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        pytest.fail("the in-process server did not start")

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    def post(self, instances: list[dict], **kwargs) -> requests.Response:
        return requests.post(self.url + ":predict", json={"instances": instances}, timeout=kwargs.pop("timeout", 120), **kwargs)
