"""A pytest plugin: the CPU seconds (this process's threads and its waited-for children) each test's
setup, call and teardown took, written as JSON lines to $CPU_DURATIONS_FILE (one file per xdist worker).

On a shared machine wall-clock durations measure the neighbours too; CPU seconds measure the work.
    CPU_DURATIONS_FILE=/tmp/cpu.jsonl .venv/bin/python -m pytest -p scripts.cpu_durations ...
    .venv/bin/python scripts/cpu_durations.py /tmp/cpu.jsonl*   # per file, slowest first
"""
import collections
import json
import os
import resource
import time

import pytest


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _record(item, phase: str, cpu: float, wall: float) -> None:
    path = os.environ.get("CPU_DURATIONS_FILE")
    if not path:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"{path}.{worker}", "a") as f:
        f.write(json.dumps({"test": item.nodeid, "phase": phase, "cpu": round(cpu, 3), "wall": round(wall, 3),
                            "worker": worker, "end": round(time.time(), 3)}) + "\n")


def _measured(phase):
    @pytest.hookimpl(wrapper=True)
    def hook(item, *args):
        cpu, wall = _cpu(), time.perf_counter()
        try:
            return (yield)
        finally:
            _record(item, phase, _cpu() - cpu, time.perf_counter() - wall)

    return hook


pytest_runtest_setup = _measured("setup")
pytest_runtest_call = _measured("call")
pytest_runtest_teardown = _measured("teardown")


def main(paths: list[str]) -> None:
    per_file = collections.defaultdict(lambda: collections.Counter())
    slowest = []
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                per_file[r["test"].split("::")[0]][r["phase"]] += r["cpu"]
                per_file[r["test"].split("::")[0]]["wall"] += r["wall"]
                slowest.append((r["cpu"], r["phase"], r["test"]))
    total = sum(c["setup"] + c["call"] + c["teardown"] for c in per_file.values())
    print(f"{'file':48} {'cpu s':>8} {'setup':>8} {'call':>8} {'wall s':>8}")
    for name, c in sorted(per_file.items(), key=lambda kv: -(kv[1]["setup"] + kv[1]["call"] + kv[1]["teardown"])):
        print(f"{name:48} {c['setup'] + c['call'] + c['teardown']:8.1f} {c['setup']:8.1f} {c['call']:8.1f} {c['wall']:8.1f}")
    print(f"{'total':48} {total:8.1f}")
    print("\nslowest phases (cpu s):")
    for cpu, phase, test in sorted(slowest, reverse=True)[:30]:
        print(f"{cpu:8.1f} {phase:8} {test}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="CPU seconds per test file and the slowest tests, from the plugin's files")
    parser.add_argument("files", nargs="+", help="the plugin's output files ($CPU_DURATIONS_FILE.<worker>)")
    main(parser.parse_args().files)
