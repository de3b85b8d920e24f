"""Which client is served next, at every stage: the model's calls (serving/batching.py) and the work
before and after them (parsing, inflating, the image header check, the answer) go by one rule,
LightFirst: the client with the least work waiting first, ties in turns (round robin, as flows in
start-time fair queuing).

Why not plain round robin: a good client is closed-loop (one request at a time, the next once this
one is answered), so under round robin among itself and 4 attackers with requests queued it waits
behind one job or model call of each attacker at every stage, about 5 service times a request
whatever the details: its fair share is 1/5. Measured with a trained model (an idle request of
some 44 ms at the median, the server on one core), its p99 was 5-6.5 times the idle one. A client with one request
waiting is served before clients with 49 queued instead, so it waits for the job or call already
running and no more; a backlogged client still gets every turn no lighter client wants (at least
every other turn beside one closed-loop client), and clients equally loaded (say, an attacker's
connection per request and the good client, one request each) still take turns as before."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools

from serving.errors import Unavailable


class Turns:
    """When each client (any hashable: a connection) was last served, as a count of turns. The next
    to serve is the client of smallest `of`: the one whose last turn is the longest ago. A client
    first seen counts as served just before the last turn: it waits behind the clients not served
    since, ahead of the one served in it, so an attacker opening a connection per request gets one
    turn a round like any client, not a turn before every client it has already been served with."""

    def __init__(self):
        self._last: dict[object, float] = {}
        self._turn = 0

    def of(self, client: object) -> float:
        return self._last.setdefault(client, self._turn - 1.5)

    def served(self, client: object) -> None:
        self._last[client] = self._turn
        self._turn += 1

    def __len__(self) -> int:
        return len(self._last)

    def keep_only(self, clients: set) -> None:
        """Forgets the clients not in `clients` (those with nothing waiting): a client that comes
        back is then new again, which costs it nothing (it joins the round as it would have)."""
        self._last = {client: turn for client, turn in self._last.items() if client in clients}


class LightFirst(Turns):
    """The order in which clients with work waiting are served: fewest waiting first (jobs for
    FairWork, instances for the model's queue), ties to the one whose last turn is the longest ago
    (Turns); callers break the remaining ties by their oldest work. The load is what waits, not what
    runs: a job or call already running delays nobody any more than it will anyway."""

    def arrived(self, client: object) -> None:
        """A client's work has been queued: a new client takes its place in the round now."""
        self.of(client)

    def key(self, client: object, waiting: int) -> tuple:
        """Sorts the clients in serving order: `waiting` its load."""
        return waiting, self.of(client)


@dataclasses.dataclass(eq=False)
class _Job:
    fn: object
    args: tuple
    future: asyncio.Future
    number: int  # arrival order, for ties between clients of the same turn


class FairWork:
    """Jobs of many clients run on `executor` at most `slots` at a time and at most `per_client` of
    one client at a time; the rest wait in a queue per client, and a freed slot goes to the oldest
    job of the client first in LightFirst's order (fewest jobs waiting, then the longest unserved).
    So a client with N jobs waiting delays another client with fewer by at most the jobs of its
    own already running, not N: the pool's own queue, in arrival order, never holds more than
    `slots` jobs. Jobs should be bounded pieces of work (an inflating
    step, not a whole body), since a slot is held until its job returns. A caller cancelled while
    its job waits (its client went away) drops the job; a running one finishes, its result unused."""

    def __init__(self, executor: concurrent.futures.Executor, slots: int, per_client: int):
        if slots < 1 or per_client < 1:
            raise ValueError(f"slots and per_client must be at least 1, got {slots} and {per_client}")
        self.executor, self.slots, self.per_client = executor, slots, per_client
        self._waiting: dict[object, collections.deque[_Job]] = {}
        self._running: collections.Counter = collections.Counter()  # client → its jobs running
        self._order = LightFirst()
        self._numbers = itertools.count()
        # Counters the tests and the benchmark read.
        self.started = 0  # jobs handed to the executor so far
        self.dropped = 0  # jobs whose caller went away before they started

    @property
    def running(self) -> int:
        return sum(self._running.values())

    def waiting(self, client: object | None = None) -> int:
        """Jobs not yet started, of `client` or of every client."""
        if client is not None:
            return len(self._waiting.get(client, ()))
        return sum(len(jobs) for jobs in self._waiting.values())

    async def run(self, client: object, fn, *args):
        """`fn(*args)` on the executor, in `client`'s turn; its result or exception."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, loop.create_future(), next(self._numbers))
        self._order.arrived(client)
        self._waiting.setdefault(client, collections.deque()).append(job)
        self._dispatch()
        try:
            # Shielded: a cancelled caller must not cancel the future of a job already running,
            # whose slot is freed only when the executor returns.
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            jobs = self._waiting.get(client)
            if jobs is not None and job in jobs:
                jobs.remove(job)
                self.dropped += 1
                if not jobs:
                    del self._waiting[client]
            else:  # running: its outcome is nobody's now
                job.future.add_done_callback(lambda future: future.cancelled() or future.exception())
            raise

    def _next_client(self) -> object | None:
        ready = [client for client, jobs in self._waiting.items() if self._running[client] < self.per_client]
        if not ready:
            return None
        return min(ready, key=lambda client: (*self._order.key(client, len(self._waiting[client])),
                                              self._waiting[client][0].number))

    def _dispatch(self) -> None:
        while self.running < self.slots and (client := self._next_client()) is not None:
            jobs = self._waiting[client]
            job = jobs.popleft()
            if not jobs:
                del self._waiting[client]
            self._order.served(client)
            self._running[client] += 1
            self.started += 1
            done = asyncio.get_running_loop().run_in_executor(self.executor, job.fn, *job.args)
            done.add_done_callback(lambda result, client=client, job=job: self._finished(client, job, result))
        if len(self._order) > 1000 + 2 * (len(self._waiting) + len(self._running)):
            self._order.keep_only(set(self._waiting) | set(self._running))

    def _finished(self, client: object, job: _Job, result: asyncio.Future) -> None:
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]
        if not job.future.done():
            if result.cancelled():
                job.future.cancel()
            elif (error := result.exception()) is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result.result())
        self._dispatch()


class Pushback:
    """Refusals for a full queue answered after `delay` seconds instead of at once: a client retrying
    in a loop (a retry storm, or an attacker) then costs the server a request per `delay`, not one per
    round trip. Measured with a trained model on a one-core server, 4 clients resending a [1000]
    tensor that the full queue refused got 3,700-6,600 refusals in 8 s, each parsed and answered on
    the server's core beside the good client's calls (its p99 6-8 times idle); held 0.1 s, some 220,
    and the p99 fell under 3 times idle (docs/serving.md). A held refusal costs a waiting coroutine
    and its request's buffer; at most `max_held` are held at once, the rest answered at once, so a
    flood of refusals cannot pile up. A client that goes away while held is simply forgotten."""

    def __init__(self, delay: float, max_held: int):
        self.delay, self.max_held = delay, max_held
        self.held = 0  # refusals being held now
        self.at_once = 0  # refusals answered at once because max_held were held (tests read it)

    async def hold(self, error: Exception) -> None:
        """Waits out the delay if `error` is a full queue's refusal (UNAVAILABLE) and a place is free."""
        if not isinstance(error, Unavailable) or self.delay <= 0:
            return
        if self.held >= self.max_held:
            self.at_once += 1
            return
        self.held += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.held -= 1
