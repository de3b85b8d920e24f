"""FairWork: the work of requests outside the model, run in turns across clients on real threads.
Jobs wait on events the test sets; the tests count and order, they never time."""
import asyncio
import concurrent.futures
import threading

import pytest

from serving.errors import InvalidArgument, Unavailable
from serving.fair import FairWork, Pushback


class Recorder:
    """Jobs that record the order they ran in; `hold` makes the next job wait until released."""

    def __init__(self):
        self.order, self.release = [], threading.Event()

    def job(self, name: str, held: bool = False):
        def run():
            if held:
                self.release.wait(60)
            self.order.append(name)
            return name
        return run


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


def _run(main) -> None:
    executor = concurrent.futures.ThreadPoolExecutor(8)
    try:
        asyncio.run(main(executor))
    finally:
        executor.shutdown(wait=True)


def _order_after_a_held_job(first: tuple[str, str], then: list[tuple[str, str]]) -> list[str]:
    """Runs job `first` (client, name) in the only slot, held until every job of `then` waits, then
    lets them all run: the names in the order they ran."""
    recorder = Recorder()

    async def main(executor):
        fair = FairWork(executor, slots=1, per_client=1)
        tasks = [asyncio.create_task(fair.run(first[0], recorder.job(first[1], held=True)))]
        await _until(lambda: fair.running == 1)
        tasks += [asyncio.create_task(fair.run(client, recorder.job(name))) for client, name in then]
        await _until(lambda: fair.waiting() == len(then))
        recorder.release.set()
        assert await asyncio.gather(*tasks) == [first[1], *(name for _, name in then)]

    _run(main)
    return recorder.order


def test_another_clients_job_runs_within_one_round_while_a_client_has_many_queued():
    order = _order_after_a_held_job(("flood", "flood0"), [("flood", f"flood{i}") for i in range(1, 50)] + [("good", "good")])
    # The flood's first job was running when the good client's arrived: the good one is next, not 51st.
    assert order[:3] == ["flood0", "good", "flood1"] and len(order) == 51


def test_the_client_with_fewest_jobs_waiting_goes_first_ties_to_the_longest_unserved():
    sent = [("a", 1), ("a", 2), ("a", 3), ("b", 0), ("c", 0), ("a", 4), ("b", 1)]
    order = _order_after_a_held_job(("a", "a0"), [(client, f"{client}{i}") for client, i in sent])
    # c has 1 waiting, b 2, a 4: c, then b (down to 1), then a. Round robin ran b0 c0 a1 b1.
    assert order == ["a0", "c0", "b0", "b1", "a1", "a2", "a3", "a4"]


def test_equally_loaded_clients_take_turns_the_longest_unserved_first():
    sent = [("a", 1), ("b", 0), ("c", 0), ("a", 2), ("b", 1), ("c", 1)]
    order = _order_after_a_held_job(("a", "a0"), [(client, f"{client}{i}") for client, i in sent])
    # b and c are new, behind nobody served since, and go before a, served last; once b is down
    # to one job it is the lightest, then c is, and a (served longest ago but heaviest) is last.
    assert order == ["a0", "b0", "b1", "c0", "c1", "a1", "a2"]
    order = _order_after_a_held_job(("a", "a0"), [("a", "a1"), ("b", "b0"), ("c", "c0")])
    assert order == ["a0", "b0", "c0", "a1"]  # one job each: round robin, as before


def test_a_client_with_one_job_waiting_goes_before_one_with_many_even_if_served_more_recently():
    order = _order_after_a_held_job(("good", "good0"), [*(("flood", f"flood{i}") for i in range(5)), ("good", "good1")])
    # good was served last, so round robin ran flood0 next; good's one job goes before flood's five.
    assert order == ["good0", "good1", "flood0", "flood1", "flood2", "flood3", "flood4"]


def test_a_backlogged_client_gets_every_other_turn_beside_a_closed_loop_light_one():
    recorder = Recorder()

    async def main(executor):
        fair = FairWork(executor, slots=1, per_client=1)
        flood = [asyncio.create_task(fair.run("flood", recorder.job(f"flood{i}"))) for i in range(20)]
        for i in range(8):  # the good client sends its next job once the last is answered
            await fair.run("good", recorder.job(f"good{i}"))
        await asyncio.gather(*flood)

    _run(main)
    # Each good job waits for the flood's running one at most, and the flood is never starved: the
    # good client's next job arrives after the flood's next has started.
    assert recorder.order == [name for i in range(8) for name in (f"good{i}", f"flood{i}")] + [f"flood{i}" for i in range(8, 20)]


def test_a_client_holds_at_most_per_client_slots_and_the_others_get_the_rest():
    recorder = Recorder()

    async def main(executor):
        fair = FairWork(executor, slots=3, per_client=2)
        held = [asyncio.create_task(fair.run("stuck", recorder.job(f"stuck{i}", held=True))) for i in range(10)]
        await _until(lambda: fair.running == 2 and fair.waiting("stuck") == 8)
        # The third slot is free for another client while the stuck one's two jobs hold theirs.
        assert await fair.run("other", recorder.job("other")) == "other"
        assert recorder.order == ["other"] and fair.waiting("stuck") == 8
        recorder.release.set()
        await asyncio.gather(*held)
        assert fair.started == 11 and fair.running == 0

    _run(main)


def test_a_cancelled_callers_waiting_job_never_runs_and_errors_reach_their_caller():
    recorder = Recorder()

    async def main(executor):
        fair = FairWork(executor, slots=1, per_client=1)
        first = asyncio.create_task(fair.run("a", recorder.job("first", held=True)))
        await _until(lambda: fair.running == 1)
        gone = asyncio.create_task(fair.run("b", recorder.job("gone")))
        await _until(lambda: fair.waiting("b") == 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert fair.dropped == 1 and fair.waiting() == 0

        def fails():
            raise ValueError("a bad body")

        failing = asyncio.create_task(fair.run("c", fails))
        recorder.release.set()
        assert await first == "first"
        with pytest.raises(ValueError, match="a bad body"):
            await failing
        assert await fair.run("d", recorder.job("after")) == "after"  # the failed job's slot was freed

    _run(main)
    assert recorder.order == ["first", "after"]


def test_a_client_opening_a_connection_per_job_gets_one_turn_a_round():
    recorder = Recorder()

    async def main(executor):
        fair = FairWork(executor, slots=1, per_client=1)

        async def client(name: str, fresh_connections: bool):
            connection = object()
            for i in range(12):  # each sends its next job once the last is done, as a closed-loop client
                await fair.run(object() if fresh_connections else connection, recorder.job(f"{name}{i}"))

        await asyncio.gather(*(client(f"attacker{n}-", True) for n in range(3)), client("good", False))

    _run(main)
    good = [index for index, name in enumerate(recorder.order) if name.startswith("good")]
    assert len(good) == 12 and len(recorder.order) == 48
    assert max(b - a for a, b in zip(good, good[1:])) <= 4, recorder.order


@pytest.mark.parametrize("slots, per_client", [(0, 1), (1, 0)])
def test_slots_and_per_client_must_be_positive(slots, per_client):
    with pytest.raises(ValueError, match="must be at least 1"):
        FairWork(concurrent.futures.ThreadPoolExecutor(1), slots, per_client)


FULL = Unavailable("The batch scheduling queue to which this task was submitted is full")


def test_a_refusal_is_held_up_to_max_held_at_once_the_rest_answered_at_once_and_a_cancelled_one_forgotten():
    async def main():
        pushback = Pushback(delay=600, max_held=2)
        held = [asyncio.create_task(pushback.hold(FULL)) for _ in range(2)]
        await _until(lambda: pushback.held == 2)
        await asyncio.wait_for(pushback.hold(FULL), 60)  # a third: both places taken, so at once
        assert pushback.at_once == 1 and not any(task.done() for task in held)
        held[0].cancel()  # its client went away
        await _until(lambda: pushback.held == 1)
        late = asyncio.create_task(pushback.hold(FULL))  # the freed place is taken again
        await _until(lambda: pushback.held == 2)
        assert pushback.at_once == 1
        for task in (held[1], late):
            task.cancel()
        await _until(lambda: pushback.held == 0)

    asyncio.run(main())


def test_a_refusal_delay_of_0_answers_at_once_and_a_short_one_after_it_and_other_errors_are_never_held():
    async def main():
        await asyncio.wait_for(Pushback(delay=0, max_held=1).hold(FULL), 60)
        never = Pushback(delay=600, max_held=1)
        await asyncio.wait_for(never.hold(InvalidArgument("a bad image")), 60)  # a 400 is not a full queue
        assert never.held == 0 and never.at_once == 0
        short = Pushback(delay=0.01, max_held=1)
        task = asyncio.create_task(short.hold(FULL))
        await _until(lambda: short.held == 1)
        await asyncio.wait_for(task, 60)  # it ends: held, then answered
        assert short.held == 0 and short.at_once == 0

    asyncio.run(main())
