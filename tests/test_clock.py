"""gateway/clock.py on a fake loop: deadlines fire in order, within their 1 ms slot, from one timer."""

from __future__ import annotations

from gateway.clock import Clock

from .fakeclock import FakeLoop


def test_deadlines_fire_in_order_and_on_time():
    loop = FakeLoop()
    clock = Clock(loop)
    fired: list[tuple[str, float]] = []
    t0 = clock.now()
    for name, delay in (("c", 0.030), ("a", 0.010), ("b", 0.020)):
        clock.call_at(t0 + delay, lambda name=name: fired.append((name, loop.time())))
    assert len(clock) == 3 and loop.armed == 1  # one loop timer for every deadline
    loop.advance(0.015)
    assert [n for n, _ in fired] == ["a"]
    loop.advance(0.1)
    assert [n for n, _ in fired] == ["a", "b", "c"]
    assert all(at - t0 - d < 0.001 for (_, at), d in zip(fired, (0.010, 0.020, 0.030)))
    assert len(clock) == 0


def test_one_slot_fires_as_one_batch_and_a_callback_may_add_to_it():
    loop = FakeLoop()
    clock = Clock(loop)
    fired = []
    t = clock.now() + 0.005

    def first():
        fired.append("first")
        clock.call_at(t, lambda: fired.append("zero gap"))  # the same slot, already firing

    clock.call_at(t, first)
    clock.call_at(t + 0.0002, lambda: fired.append("same slot"))
    loop.advance(0.006)
    assert fired[:2] == ["first", "same slot"]
    loop.advance(0.002)
    assert fired == ["first", "same slot", "zero gap"]  # found on the next turn, not lost


def test_a_failing_callback_does_not_stop_the_clock():
    loop = FakeLoop()
    clock = Clock(loop)
    fired = []
    t = clock.now()
    clock.call_at(t + 0.001, lambda: 1 / 0)
    clock.call_at(t + 0.002, lambda: fired.append("after"))
    loop.advance(0.01)
    assert fired == ["after"]


def test_stop_forgets_every_deadline():
    loop = FakeLoop()
    clock = Clock(loop)
    fired = []
    clock.call_at(clock.now() + 0.01, lambda: fired.append(1))
    clock.stop()
    loop.advance(1)
    assert fired == [] and len(clock) == 0 and loop.armed == 0
