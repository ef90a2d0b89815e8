"""The simulated model's timing on a fake clock: on time it gives one token per deadline; when the
process runs late, every token already due comes at once, so readers take a backlog in one write."""

from __future__ import annotations

from gateway.clock import Clock
from gateway.models import StreamRequest
from gateway.sources.simulated import CATCH_UP, SimGeneration, expected_text

from .fakeclock import FakeLoop

ITL = 0.020


class Sink:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.tokens: list[tuple[float, str]] = []  # (loop time, text)
        self.end: str | None = None

    def token(self, text: str) -> None:
        self.tokens.append((self.loop.now, text))

    def fail(self, code: str, message: str, retryable: bool = False) -> None:
        self.end = code

    def finish(self, finish_reason: str = "stop") -> None:
        self.end = finish_reason

    def text(self) -> str:
        return "".join(t for _, t in self.tokens)


def start(max_tokens: int, prompt: str = "catch up", itl: float = ITL) -> tuple[FakeLoop, Sink, list[int]]:
    """A generation on a fake clock, and the tokens each of its steps gave (after the first step)."""
    loop = FakeLoop()
    sink = Sink(loop)
    request = StreamRequest(prompt=prompt, max_tokens=max_tokens, seed=7,
                            sim={"ttft_ms": 100, "itl_ms": itl * 1000, "jitter": 0})
    gen = SimGeneration(sink, Clock(loop), request, (0.0, 0.0, 0.0))
    per_step: list[int] = []
    step = gen.step

    def counted() -> None:
        before = len(sink.tokens)
        step()
        per_step.append(len(sink.tokens) - before)

    gen._step = counted  # the callback it schedules for each next deadline
    return loop, sink, per_step


def test_on_time_each_deadline_gives_one_token():
    loop, sink, per_step = start(20)
    loop.advance(0.1 + 19 * ITL + 0.002)
    assert sink.text() == expected_text("catch up", 7, 20) and sink.end == "stop"
    assert per_step == [1] * 19 and len({at for at, _ in sink.tokens}) == 20


def test_a_late_process_gets_every_due_token_at_once_and_keeps_the_schedule():
    loop, sink, per_step = start(60)
    loop.advance(0.1 + 0.0005)  # the first token, on time
    loop.now += 5 * ITL + 0.005  # the loop is stuck for 5 gaps: the timer fires late
    loop.advance(0.0)
    assert per_step == [5]  # the 5 tokens due while it was stuck, in one step
    loop.now += 1.0  # stuck for 50 gaps: at most CATCH_UP a step, the rest in the next firings
    loop.advance(0.0)
    assert per_step[1:] == [CATCH_UP, CATCH_UP, CATCH_UP, 50 - 3 * CATCH_UP]
    loop.advance(0.1)  # the deadlines stayed absolute: the last 4 come on their own again
    assert per_step[5:] == [1, 1, 1, 1]
    assert sink.text() == expected_text("catch up", 7, 60) and sink.end == "stop"  # none lost, none twice


def test_a_gap_under_one_clock_slot_gives_one_token_a_step():
    # Such a stream already runs back to back inside one clock firing (bounded by the clock's budget),
    # so its steps do not burst as well.
    loop, sink, per_step = start(40, prompt="fast", itl=0.00005)
    loop.now += 0.2  # stuck past all 40 deadlines
    loop.advance(0.0)
    assert sink.text() == expected_text("fast", 7, 40) and per_step == [1] * 39
