"""gateway/stream.py without sockets: the sink a source writes, readers' cursors, detach and cancel."""

from __future__ import annotations

import asyncio
import hashlib

from gateway.events import Done, Error, Meta, Token, from_json
from gateway.stream import DONE, FAILED, RUNNING, Stream


def new(one_shot: bool = False, **kw):
    seen: list[str] = []
    stream = Stream("s1", "sim", one_shot=one_shot, now=100.0,
                    on_event=lambda s, what, sub=None: seen.append(what), **kw)
    return stream, seen


def events(stream: Stream, start: int = 0):
    return [from_json(stream.log.json(i)) for i in range(start, len(stream.log))]


def test_a_stream_logs_meta_tokens_and_one_terminal_event_each_encoded_once():
    stream, seen = new()
    stream.token("Hel")
    stream.token("lo")
    stream.finish()
    stream.token("late")  # after the end: ignored
    stream.fail("x", "y")  # so is a second ending
    logged = events(stream)
    assert logged[0] == Meta("s1", "sim", stream.created)
    assert logged[1:3] == [Token(1, "Hel"), Token(2, "lo")]
    assert logged[3] == Done(3, "stop", 2, stream.sha256) and stream.status == DONE
    assert stream.text() == "Hello" and seen == ["first_token", "ended"]


def test_a_failure_ends_in_band_and_keeps_the_partial_text():
    stream, _ = new()
    stream.token("part")
    stream.fail("model_error", "it broke", True)
    assert events(stream)[-1] == Error(2, "model_error", "it broke", True)
    assert stream.status == FAILED and stream.text() == "part"


def test_an_ended_stream_keeps_only_what_resume_needs_and_its_sha256_still_reads():
    """Kept for resume (the TTL), an ended stream holds no hash object, pending texts or generation, and no
    per-instance dict; its sha256 (the done event's, or the partial text's) is still the text's."""
    texts = [f" t{i}" for i in range(40)]  # past 16: some hashed, 8 still pending at the end
    want = hashlib.sha256("".join(texts).encode()).hexdigest()
    for end in ("finish", "fail"):
        stream, _ = new()
        assert not hasattr(stream, "__dict__")
        for text in texts:
            stream.token(text)
        stream.finish() if end == "finish" else stream.fail("model_error", "it broke")
        assert stream._hash is None and stream._unhashed is None and stream.generation is None
        assert stream.sha256 == want, end
        if end == "finish":
            assert events(stream)[-1] == Done(41, "stop", 40, want)


def test_a_reader_attached_after_a_seq_reads_from_the_next_one():
    stream, seen = new()
    for t in "abc":
        stream.token(t)
    sub = stream.attach(1, "ndjson", 101.0)
    assert sub.cursor == 2 and events(stream, sub.cursor) == [Token(2, "b"), Token(3, "c")]
    assert seen[-1] == "attached" and stream.detached_since is None


def test_wait_returns_when_an_event_comes_and_a_lost_client_is_not_a_cancel():
    async def go():
        stream, seen = new()
        sub = stream.attach(-1, "sse_post", 100.0)
        sub.cursor = len(stream.log)
        waiting = asyncio.ensure_future(stream.wait(sub))
        await asyncio.sleep(0)
        assert not waiting.done()
        stream.token("x")  # wakes the reader (batched: after this callback)
        await asyncio.wait_for(waiting, 1)
        stream.detach(sub, 102.0, client_left=True)
        return stream, sub, seen

    stream, sub, seen = asyncio.run(go())
    assert stream.status == RUNNING  # a lost connection is not a cancel
    assert sub.conn.cut == "client_left" and "cut" in seen and stream.detached_since == 102.0


def test_a_client_that_cannot_resume_cancels_when_it_leaves_one_that_can_does_not():
    async def go():
        chat, seen = new(one_shot=True)
        sub = chat.attach(-1, "chat", 100.0)
        chat.detach(sub, 101.0, client_left=True)
        sse, _ = new(one_shot=True)
        sub = sse.attach(-1, "sse_post", 100.0)
        sse.detach(sub, 101.0, client_left=True)
        return chat, seen, sse

    chat, seen, sse = asyncio.run(go())
    assert chat.status == FAILED and events(chat)[-1].code == "cancelled" and "cancelled:client_gone" in seen
    assert sse.status == RUNNING  # it may come back within the grace


def test_a_drop_is_injected_once_per_stream():
    stream, _ = new(drop_after=3)
    first = stream.attach(-1, "ndjson", 100.0)
    again = stream.attach(2, "ndjson", 101.0)
    assert first.conn.drop_at == 4 and again.conn.drop_at is None


def test_kick_asks_only_resumable_readers_to_go_elsewhere():
    async def go():
        stream, _ = new()
        ws = stream.attach(-1, "ws", 100.0)
        chat = stream.attach(-1, "chat", 100.0)
        stream.kick()
        return ws, chat

    ws, chat = asyncio.run(go())
    assert ws.kicked and ws.gone and not chat.kicked and not chat.gone


def test_a_reader_with_no_parked_task_has_its_transport_start_one_once():
    """`Subscriber.start`: a transport whose writer task ended once caught up (ws.py) is asked to start one
    where a parked task would be woken (a heartbeat here), once, and not again until it re-arms."""
    async def go():
        stream, _ = new()
        sub = stream.attach(-1, "ws", 100.0)
        sub.cursor = len(stream.log)
        started = []
        sub.start = lambda: started.append(sub.beat)
        sub.beat = True
        sub.wake()
        await asyncio.sleep(0)  # the batched flush
        assert started == [True] and sub.start is None
        sub.wake()
        await asyncio.sleep(0)
        assert started == [True]

    asyncio.run(go())
