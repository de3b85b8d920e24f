"""Server-side batching as TF Serving does it, configured by the same BatchingParameters text file.

Every predict request is a task for one BatchScheduler. As in TF Serving, a task of more than
`max_batch_size` instances is refused (INVALID_ARGUMENT: "Task size N is larger than maximum input
batch size M"), a full queue refuses a task (UNAVAILABLE), and `num_batch_threads` threads run the
model. With `enable_large_batch_splitting` a task is split
into pieces of at most `max_execution_batch_size` instances. With batching enabled, waiting tasks of
the same signature are merged into one model call of up to `max_execution_batch_size` instances, the
batch closing when full or when its oldest task has waited `batch_timeout_micros`.

Three things differ from TF Serving, so that a few large requests cannot hold up everyone else. The
queue admits by instances, not batches: a request of a [1000] tensor costs 1000 however few bytes it
took to send. Requests of one model call or less (small) and larger ones (split) wait in separate
pools of `max_enqueued_instances` each, a task admitted when its pool is empty or it fits: large
requests never lock small ones out, and single-product requests queue by the hundred without
batching (TF Serving's count of 10 batches of one refused the 11th). And the next task is not the
oldest but the oldest of the client (a connection) first in serving/fair.py's LightFirst order: the
fewest instances waiting (not handed to the model yet) first, ties to the client whose last turn is
the longest ago. So a client with one single-product request waits for the call already running,
not behind one call of each client with 50 queued or a [1000] request (a closed-loop client under
plain round robin among 5 got a fifth of the model, its p99 5-6.5 times idle: see fair.py); a new
client joins the round behind the clients not served since the last turn (an attacker opening a
connection per request, one request each, takes one turn a round as the good client does). Load is
counted in instances, as the queue admits: a [1000] request weighs its instances not yet handed
out, heavy until its last pieces. With batching, a call is filled a round at a time, the clients in
that order, one request of each client a round (of a split request, a share of the call's
instances), so concurrent single-product requests of different clients share one call and the
lightest clients' requests are in its first round. A call holding a piece of a split
task runs with the cores to itself (concurrent calls share them unevenly: a small request beside
a large piece ran 3-4 times slower), and the task goes back to the queue after each piece, lighter
by that piece, so a small request waits for one piece at most (of two split tasks, the one with
fewer instances left goes first: the shortest remaining work first, not their pieces in turn). And a task whose client has gone
away (a gRPC deadline, a closed HTTP connection) is dropped from the queue: only the piece already
running is computed for it. Without --enable-batching the same scheduler runs each task on its own (no merging).

Without a file the defaults are TF Serving's (max_batch_size 1000, batch_timeout_micros 0,
max_enqueued_batches 10, one batch thread per core) except that large tasks are split, into pieces
of DEFAULT_EXECUTION_BATCH_SIZE, one on a one-core server (DEFAULT_MERGED_BATCH_SIZE with batching): TF Serving without
batching runs a 1,000-instance request as one call.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.errors import InvalidArgument, ServingError, Unavailable
from serving.fair import LightFirst

# A small request arriving while a large one is computed waits for one piece: with the project's
# model on two cores a piece of 2 products costs about 1.5 single-product requests (4: 2.5, and a
# small request's p99 rose 3.2-fold), for some 20% more time per product than pieces of 16. On one
# core a piece of 2 costs 1.4-2.2 single-product calls (a trained hm model, medians of several runs
# of scripts/bench_call_cost.py), so there pieces are of one (default_execution_batch_size): the
# same trade again, a small request's wait before a large request's time per product.
DEFAULT_EXECUTION_BATCH_SIZE = 2
# With --enable-batching and no file, batches of up to this many (k8s/base's max_batch_size for the
# CPU pod): pieces of 2 would leave nothing to merge; a large request then waits in pieces of 32.
DEFAULT_MERGED_BATCH_SIZE = 32

log = logging.getLogger(__name__)


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto), which ships in neither
    tensorflow-serving-api nor tensorflow: declared here so google.protobuf.text_format parses the
    file exactly as TF Serving does (comments, field syntax, unknown or repeated fields refused).
    Fields 1-7 are TF Serving's; the last two came later and are read by name only (text format
    never sees a field number)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="hanet/serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    message = file.message_type.add(name="BatchingParameters")
    optional, repeated = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    wrapped = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    fields = [
        ("max_batch_size", wrapped, ".google.protobuf.Int64Value", optional),
        ("batch_timeout_micros", wrapped, ".google.protobuf.Int64Value", optional),
        ("max_enqueued_batches", wrapped, ".google.protobuf.Int64Value", optional),
        ("num_batch_threads", wrapped, ".google.protobuf.Int64Value", optional),
        ("thread_pool_name", wrapped, ".google.protobuf.StringValue", optional),
        ("allowed_batch_sizes", descriptor_pb2.FieldDescriptorProto.TYPE_INT64, None, repeated),
        ("pad_variable_length_inputs", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, None, optional),
        ("enable_large_batch_splitting", wrapped, ".google.protobuf.BoolValue", optional),
        ("max_execution_batch_size", wrapped, ".google.protobuf.Int64Value", optional),
    ]
    for number, (name, kind, type_name, label) in enumerate(fields, start=1):
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


class BatchingParametersError(ValueError):
    """A batching parameters file that cannot be read or holds a value TF Serving would refuse."""


def _cpu_count() -> int:
    # The cores this process may run on (a container's cpuset), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_execution_batch_size() -> int:
    """A split request's pieces without batching: DEFAULT_EXECUTION_BATCH_SIZE, one on a one-core server."""
    return min(DEFAULT_EXECUTION_BATCH_SIZE, _cpu_count())


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """What the scheduler does; `from_parameters` fills it from a BatchingParameters message."""

    max_batch_size: int = 1000  # the most instances one request may carry
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=_cpu_count)
    enable_large_batch_splitting: bool = True
    # The most instances one model call takes.
    max_execution_batch_size: int = dataclasses.field(default_factory=default_execution_batch_size)
    enable_batching: bool = False  # merge concurrent requests into one model call
    # Instances each pool of waiting tasks (small, split) may hold; None: max_enqueued_batches full
    # batches, and at least one request of max_batch_size.
    max_enqueued_instances: int | None = None

    @property
    def instance_capacity(self) -> int:
        if self.max_enqueued_instances is not None:
            return self.max_enqueued_instances
        return max(self.max_batch_size, self.max_enqueued_batches * self.max_execution_batch_size)

    def describe(self) -> str:
        merging = "batching on" if self.enable_batching else "batching off (each model call serves one request)"
        return (
            f"{merging}: at most {self.max_batch_size} instances a request, {self.max_execution_batch_size} a model "
            f"call, {self.num_batch_threads} batch threads, {self.instance_capacity} enqueued instances of small "
            f"requests and as many of split ones, batch timeout {self.batch_timeout_micros} us"
        )

    @classmethod
    def from_parameters(cls, parameters, enable_batching: bool, source: str = "batching parameters",
                        max_enqueued_instances: int | None = None) -> BatchingOptions:
        """TF Serving's reading of the file: a field left out takes TF Serving's default, and
        without enable_large_batch_splitting a model call takes up to max_batch_size instances."""

        def value(field: str, default: int) -> int:
            return getattr(parameters, field).value if parameters.HasField(field) else default

        max_batch_size = value("max_batch_size", 1000)
        splitting = parameters.HasField("enable_large_batch_splitting") and parameters.enable_large_batch_splitting.value
        options = cls(
            max_batch_size=max_batch_size,
            batch_timeout_micros=value("batch_timeout_micros", 0),
            max_enqueued_batches=value("max_enqueued_batches", 10),
            num_batch_threads=value("num_batch_threads", _cpu_count()),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=value("max_execution_batch_size", max_batch_size) if splitting else max_batch_size,
            enable_batching=enable_batching,
            max_enqueued_instances=max_enqueued_instances,
        )
        for field, minimum in (("max_batch_size", 1), ("batch_timeout_micros", 0), ("max_enqueued_batches", 1),
                               ("num_batch_threads", 1), ("max_execution_batch_size", 1)):
            if getattr(options, field) < minimum:
                raise BatchingParametersError(f"{source}: {field} must be at least {minimum}, got {getattr(options, field)}")
        if options.max_execution_batch_size > options.max_batch_size:
            raise BatchingParametersError(
                f"{source}: max_execution_batch_size {options.max_execution_batch_size} is larger than "
                f"max_batch_size {options.max_batch_size}"
            )
        sizes = list(parameters.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != options.max_execution_batch_size):
            raise BatchingParametersError(
                f"{source}: allowed_batch_sizes {sizes} must increase and end with the largest batch "
                f"({options.max_execution_batch_size})"
            )
        if sizes or parameters.pad_variable_length_inputs:
            # Padding batches up to fixed sizes saves recompiling on accelerators; a local CPU server
            # gains nothing from it, and batches of different trailing shapes are simply not merged.
            log.warning("%s: allowed_batch_sizes and pad_variable_length_inputs have no effect in this server", source)
        return options


def parse_batching_parameters(text: str, source: str = "batching parameters"):
    """BatchingParameters from its text format, as --batching_parameters_file holds it."""
    try:
        return text_format.Parse(text, BatchingParameters())
    except text_format.ParseError as e:
        raise BatchingParametersError(f"{source}:{e}") from None


def load_batching_options(path: str | None, enable_batching: bool,
                          max_enqueued_instances: int | None = None) -> BatchingOptions:
    """The scheduler's options: from a BatchingParameters file, or the defaults (see the module)."""
    if max_enqueued_instances is not None and max_enqueued_instances < 1:
        raise BatchingParametersError(f"max_enqueued_instances must be at least 1, got {max_enqueued_instances}")
    if path is None:
        if enable_batching:
            return BatchingOptions(enable_batching=True, max_execution_batch_size=DEFAULT_MERGED_BATCH_SIZE,
                                   max_enqueued_instances=max_enqueued_instances)
        return BatchingOptions(max_enqueued_instances=max_enqueued_instances)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchingParametersError(f"cannot read batching parameters {path}: {getattr(e, 'strerror', None) or e}") from None
    return BatchingOptions.from_parameters(parse_batching_parameters(text, path), enable_batching, path,
                                           max_enqueued_instances)


def batch_size(inputs: dict[str, np.ndarray]) -> int:
    """The size of a request's batch: the first dimension its input tensors share."""
    sizes = {}
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidArgument(f"input {name!r} is a scalar; this server batches every input along its first dimension")
        sizes[name] = array.shape[0]
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(
            "input tensors must have equal 0th-dimension size (the batch); got "
            + ", ".join(f"{name}: {size}" for name, size in sorted(sizes.items()))
        )
    return next(iter(sizes.values()))


@dataclasses.dataclass(eq=False)  # eq=False: compared and hashed by identity
class _Task:
    """One request: its inputs, how many of its instances have been handed to the model, its answer."""

    key: tuple
    run: object  # (inputs) -> outputs, called on a batch thread
    inputs: dict[str, np.ndarray]
    size: int
    future: asyncio.Future
    enqueued_at: float
    handed_out: int = 0  # instances given to the model so far: their outputs in `pieces` or being computed
    pieces: list = dataclasses.field(default_factory=list)
    alone: bool = False  # never merged with other tasks (set after a merged batch failed)
    client: object = None  # who sent it (a connection): turns go round the clients

    @property
    def remaining(self) -> int:
        return self.size - self.handed_out


@dataclasses.dataclass
class _Slice:
    task: _Task
    start: int
    stop: int


class BatchScheduler:
    """Runs model calls for concurrent requests on `num_batch_threads` threads (see the module)."""

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._threads = concurrent.futures.ThreadPoolExecutor(options.num_batch_threads, thread_name_prefix="batch")
        self._idle_threads = options.num_batch_threads
        self._piece_running = False
        self._queue: collections.deque[_Task] = collections.deque()
        self._tasks: set[_Task] = set()  # accepted and not yet answered (or cancelled)
        self._running: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._order = LightFirst()  # whose turn the next call is (see _by_client)
        # What the model has been asked to compute: batches and instances (tests and the benchmark read them).
        self.batches_started = 0
        self.batches_run = 0
        self.instances_run = 0

    def idle(self) -> bool:
        """No task waits and no model call runs."""
        return not self._tasks and not self._running

    def check_size(self, size: int) -> None:
        if size > self.options.max_batch_size:
            raise InvalidArgument(
                f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}: "
                f"the request has {size} instances, this server takes at most {self.options.max_batch_size} "
                "(max_batch_size of its batching parameters)"
            )

    def waiting_instances(self, split: bool) -> int:
        """Instances of accepted tasks not yet handed to the model, of split tasks or of small ones."""
        limit = self.options.max_execution_batch_size
        return sum(task.remaining for task in self._tasks if (task.size > limit) == split)

    def _fits(self, size: int) -> bool:
        waiting = self.waiting_instances(size > self.options.max_execution_batch_size)
        return not waiting or waiting + size <= self.options.instance_capacity

    def check_room(self) -> None:
        """Refuses (UNAVAILABLE) any request while neither pool has room for its smallest task (one
        instance; one more than a model call): a server may refuse before reading a request at all."""
        limit = self.options.max_execution_batch_size
        if not self._fits(1) and (limit >= self.options.max_batch_size or not self._fits(limit + 1)):
            raise Unavailable(
                "The batch scheduling queue is full: no request fits in it now "
                f"(max_enqueued_instances {self.options.instance_capacity} of requests of one model call or less, "
                "and as many of larger ones); retry later"
            )

    def check_admission(self, size: int) -> None:
        """Refuses (UNAVAILABLE) a task of `size` instances that its pool has no room for; on the event
        loop. `run` checks again: a server may call this first, to refuse before costlier checks."""
        split = size > self.options.max_execution_batch_size
        waiting, capacity = self.waiting_instances(split), self.options.instance_capacity
        if not self._fits(size):
            kind = "larger than one model call" if split else "of one model call or less"
            raise Unavailable(
                "The batch scheduling queue to which this task was submitted is full: "
                f"{waiting} instances of requests {kind} wait, and this one has {size} "
                f"(max_enqueued_instances {capacity}); retry later"
            )

    async def run(self, key: tuple, run, inputs: dict[str, np.ndarray], client: object = None) -> dict[str, np.ndarray]:
        """Computes `run(inputs)` (dict of arrays → dict of arrays, batched along the first dimension)
        for one request, in batches shared with other requests of the same `key` when batching is on.
        A cancelled caller's instances not yet handed to the model are never computed; `client`
        (hashable: who sent it) takes turns with the other clients."""
        size = batch_size(inputs)
        self.check_size(size)
        self.check_admission(size)
        loop = asyncio.get_running_loop()
        task = _Task(key, run, inputs, size, loop.create_future(), loop.time(), client=client)
        self._tasks.add(task)
        task.future.add_done_callback(lambda _: self._tasks.discard(task))
        self._order.arrived(client)
        self._queue.append(task)
        self._dispatch()
        # Awaiting the future directly: cancelling the caller cancels it, and _take_batch skips it.
        return await task.future

    def _dispatch(self) -> None:
        while self._idle_threads and not self._piece_running and (batch := self._take_batch()):
            self._idle_threads -= 1
            self.batches_started += 1
            job = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    def _by_client(self) -> list[list[_Task]]:
        """The queued tasks grouped by client, each client's oldest first, the clients in LightFirst
        order: fewest instances waiting first, then the longest unserved, then the oldest task (its
        place in the queue). Cancelled tasks are dropped first, so they weigh nothing."""
        if any(task.future.done() for task in self._queue):  # cancelled by their callers
            self._queue = collections.deque(task for task in self._queue if not task.future.done())
        groups: dict[object, list[_Task]] = {}
        for task in self._queue:
            groups.setdefault(task.client, []).append(task)
        # sorted() is stable and the groups are in their oldest task's queue order: the last tie-break.
        return sorted(groups.values(), key=lambda tasks: self._order.key(tasks[0].client,
                                                                         sum(task.remaining for task in tasks)))

    def _served(self, client: object) -> None:
        self._order.served(client)
        if len(self._order) > 1000 + 2 * len(self._queue):  # forget clients with nothing queued
            self._order.keep_only({task.client for task in self._queue})

    def _split(self, task: _Task) -> bool:
        return task.size > self.options.max_execution_batch_size

    def _take_batch(self) -> list[_Slice] | None:
        """The next model call: the head client's oldest task, or its split task's next piece; with
        batching, merged with other clients' tasks of the same signature in rounds, the clients in
        _by_client's order, one task (or one share of a split task's instances) per client a round,
        until the call is full. A call holding
        a piece of a split task runs with no other call beside it."""
        options = self.options
        clients = self._by_client()
        if not clients:
            return None
        head = clients[0][0]
        limit = options.max_execution_batch_size
        exclusive_free = self._idle_threads == options.num_batch_threads
        if self._split(head) and not exclusive_free:
            return None  # its piece waits until the calls running now are done
        merging = options.enable_batching and not head.alone
        if merging:
            candidates = [[task for task in tasks if task.key == head.key and not task.alone
                           and (exclusive_free or not self._split(task))] for tasks in clients]
            candidates = [tasks for tasks in candidates if tasks]
        else:
            candidates = [[head]]
        share = max(1, limit // len(candidates))
        taken: dict[_Task, _Slice] = {}
        order: list[object] = []  # clients in the call, in the order they joined it
        rows, full, progress = 0, False, True
        while rows < limit and progress:
            progress = False
            for tasks in candidates:
                if not tasks or rows == limit:
                    continue
                task = tasks[0]
                if self._split(task):  # a share of its instances this round, contiguous with what it has
                    piece = taken.get(task) or _Slice(task, task.handed_out, task.handed_out)
                    count = min(task.size - piece.stop, limit - rows, share)
                    piece.stop += count
                    taken[task] = piece
                    if piece.stop == task.size:
                        tasks.pop(0)
                elif task.size <= limit - rows:  # a small task whole, never split
                    count = task.size
                    taken[task] = _Slice(task, 0, task.size)
                    tasks.pop(0)
                else:
                    full = True
                    tasks.clear()  # its later tasks wait behind it
                    continue
                rows += count
                progress = True
                if task.client not in order:
                    order.append(task.client)
            if not merging:
                break
        if merging and not (full or rows == limit):
            deadline = head.enqueued_at + options.batch_timeout_micros / 1e6
            loop = asyncio.get_running_loop()
            if loop.time() < deadline:
                # Neither full nor old enough: wait for more tasks, or the timeout, before running it.
                if self._timer is None or self._timer.when() > deadline:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = loop.call_at(deadline, self._on_timer)
                return None
        for task, piece in taken.items():
            self._queue.remove(task)
            task.handed_out = piece.stop
        for client in order:
            self._served(client)
        if any(self._split(task) for task in taken):
            self._piece_running = True
        return list(taken.values())

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    async def _execute(self, batch: list[_Slice]) -> None:
        loop = asyncio.get_running_loop()
        first = batch[0].task
        rows = sum(piece.stop - piece.start for piece in batch)
        try:
            if len(batch) == 1 and batch[0].start == 0 and batch[0].stop == first.size:
                inputs = first.inputs
            else:
                inputs = {
                    name: np.concatenate([piece.task.inputs[name][piece.start : piece.stop] for piece in batch])
                    for name in first.inputs
                }
            outputs = await loop.run_in_executor(self._threads, first.run, inputs)
            self.batches_run += 1
            self.instances_run += rows
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise ServingError(
                        f"output {name!r} has shape {list(array.shape)}, not a batch of {rows}: "
                        "a signature this server batches must answer one row per instance"
                    )
        except Exception as e:
            if len(batch) > 1:
                # One request's bad input (say, a photo that is not an image) must not fail the others
                # merged with it: each runs again on its own, and only the culprit gets the error.
                for piece in reversed(batch):
                    piece.task.handed_out, piece.task.alone = piece.start, True
                    self._queue.appendleft(piece.task)
            elif not first.future.done():
                first.future.set_exception(e)
        else:
            offset = 0
            for piece in batch:
                task, count = piece.task, piece.stop - piece.start
                if not task.future.done():
                    task.pieces.append({name: array[offset : offset + count] for name, array in outputs.items()})
                    if task.handed_out < task.size:
                        self._queue.append(task)
                    elif len(task.pieces) == 1:
                        task.future.set_result(task.pieces[0])
                    else:
                        task.future.set_result({name: np.concatenate([p[name] for p in task.pieces]) for name in outputs})
                offset += count
        finally:
            self._idle_threads += 1
            if any(self._split(piece.task) for piece in batch):
                self._piece_running = False
            self._dispatch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._queue:
            if not task.future.done():
                task.future.cancel()
        self._queue.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
