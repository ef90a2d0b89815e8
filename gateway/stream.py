"""A stream: the source writes events into its log; attached clients read them.

The stream is the sink a model source pushes into (`token`, `fail`,
`finish`). Each attached client is a `Subscriber` with a cursor into the log;
appending wakes the waiting subscribers, which then write everything past
their cursor in one batch (coalescing happens by itself under load).

Wakes are batched: a subscriber woken during a loop callback (one clock tick
fires every token due) is flushed once that callback returns. A transport
whose connection is idle sets `push`, which writes right there, in the flush,
without waking its task; anything unusual (the end, a heartbeat, a client
gone, backpressure) falls back to waking the task.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from .events import KIND, Done, Error, Meta, from_json, to_json, token_json
from .log import BLOCK, EventLog
from .names import RESUMABLE

if TYPE_CHECKING:
    from .sources.base import Generation

__all__ = ["Stream", "Subscriber", "Connection", "set_write_window", "RUNNING", "DONE", "FAILED", "TAIL", "SEAL_AT"]

log = logging.getLogger("gateway.stream")

RUNNING, DONE, FAILED = "running", "done", "error"
# The log's tail keeps at least this many events unsealed while the stream runs (readers just behind
# frame from it); past BLOCK more, the oldest BLOCK are sealed (gateway/log.py).
TAIL = 8
SEAL_AT = BLOCK + TAIL
_TOKEN, _ERROR, _DONE, _META = KIND["token"], KIND["error"], KIND["done"], KIND["meta"]


class _Batch:
    """Subscribers woken during the current loop callback, flushed right after it.

    With a write window (`write_window_ms`), the flush waits for the window's
    end instead: a connection then writes at most once per window, however many
    events came due in it. Fewer writes (the kernel's share of the CPU is one
    write per event otherwise), for up to one window of added latency.
    """

    __slots__ = ("subs", "loop", "window")

    def __init__(self) -> None:
        self.subs: list[Subscriber] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.window = 0.0

    def add(self, sub: Subscriber) -> None:
        if self.loop is None or self.loop.is_closed():  # (a loop that died with a flush pending)
            self.subs.clear()
            self.loop = loop = asyncio.get_running_loop()
            window = self.window
            if window:
                loop.call_at((loop.time() // window + 1) * window, self.flush)
            else:
                loop.call_soon(self.flush)
        self.subs.append(sub)

    def flush(self) -> None:
        subs, self.subs, self.loop = self.subs, [], None
        for sub in subs:
            sub.queued = False
            push = sub.push
            try:
                if push is not None and push(sub):
                    continue
            except Exception:  # a broken connection must not stop the others
                log.exception("push failed")
            sub.push = None
            sub.resolve()


_batch = _Batch()


def set_write_window(seconds: float) -> None:
    """Coalesce each connection's writes over windows this long (0: write as events come)."""
    _batch.window = seconds


class Connection:
    """A reader's connection as the sweep and the journal see it (the transport's side of a reader)."""

    __slots__ = ("transport", "since", "mark", "quiet_since", "sending", "blocked", "lag_base", "abort", "cut",
                 "drop_at")

    def __init__(self, transport: str, now: float, drop_at: int | None) -> None:
        self.transport = transport  # its name (gateway/names.py): the metric label, the journal's field
        self.since = now  # when it attached
        # Heartbeats (the sweep): the cursor the sweep last saw move, and since when it has not.
        self.mark = -1
        self.quiet_since = now
        # Slow consumers (the sweep): loop time when the pending write began, 0.0 when none is.
        self.sending = 0.0
        self.blocked = 0.0  # the `sending` the sweep last saw, and the log size then
        self.lag_base = 0
        self.abort: Callable[[], None] | None = None  # drops the connection, buffered bytes and all
        self.cut: str | None = None  # why the connection ended before the stream's end
        # Fault injection (`sim.drop_after`): cut the connection at this log index. The transport reads it
        # once, when it starts; such a reader is written by its task, never from the batched flush.
        self.drop_at = drop_at


class Subscriber:
    """A reader's cursor into a stream's log, and how the stream wakes the task that writes it."""

    __slots__ = ("cursor", "waiter", "queued", "push", "beat", "gone", "kicked", "conn", "start")

    def __init__(self, cursor: int, conn: Connection) -> None:
        self.cursor = cursor  # the index of the next event to write
        self.waiter: asyncio.Future | None = None  # the parked task's future (`Stream.wait`)
        self.queued = False  # in the current batch already
        # Set by the transport while its task is parked: `push(sub)` writes
        # what is due and returns True, or False to have the task woken.
        self.push: Callable[[Subscriber], bool] | None = None
        self.beat = False  # a heartbeat is due
        self.gone = False  # the client left, or the server is ending this connection
        self.kicked = False  # the server is draining: tell the client to reconnect elsewhere
        self.conn = conn
        # Set by a transport with no task parked for this reader (its writer task ends once caught
        # up, and `push` writes from there): called, once, where the parked task would be woken.
        self.start: Callable[[], None] | None = None

    def wake(self) -> None:
        if not self.queued:
            self.queued = True
            _batch.add(self)

    def resolve(self) -> None:
        """Wake the transport's task now (or have the transport start one)."""
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)
        elif self.start is not None:
            start, self.start = self.start, None
            start()


class Stream:
    # Slots: the registry keeps ended streams for resume (the TTL), so each byte here counts per stream kept.
    __slots__ = ("id", "owner_key", "model", "one_shot", "created", "started", "log", "settle_at", "subs", "status",
                 "tokens", "finish_reason", "error_code", "_hash", "_unhashed", "generation", "drop_after", "info",
                 "detached_since", "keep", "leave_cancels", "budget", "left_at", "wasted", "ended_at",
                 "progress_mark", "progress_at", "_on_event", "on_append")

    def __init__(
        self,
        stream_id: str,
        model: str,
        *,
        one_shot: bool,
        now: float,
        on_event: Callable[..., None],
        drop_after: int | None = None,
        info: dict[str, Any] | None = None,
        owner_key: str | None = None,
    ) -> None:
        self.id = stream_id
        self.owner_key = owner_key  # the API key id that created it; only that key can see it
        self.model = model
        self.one_shot = one_shot
        self.created = time.time()
        self.started = now
        self.log = EventLog()
        self.settle_at = SEAL_AT  # the log length at which `token` next tries to seal
        self.subs: list[Subscriber] = []
        self.status = RUNNING
        self.tokens = 0
        self.finish_reason: str | None = None
        self.error_code: str | None = None
        self._hash: Any = hashlib.sha256()  # None once ended (`sha256` then reads the log)
        # Texts not yet fed to the hash: fed 16 at a time (95 ns a token here against 233 one by one and 83 at 64;
        # a relay's tokens are new strings, ~60 B each, held until fed: 64 kept up to ~4 KB per stream).
        self._unhashed: list[str] | None = []
        self.generation: Generation | None = None
        self.drop_after = drop_after
        self.info = info or {}
        self.detached_since: float | None = now
        self.keep = False  # generate to the end with no client attached (no detach grace): Responses background
        # A lost connection stops the generation at once (else the grace applies): set by the registry.
        self.leave_cancels = False
        self.budget = 0  # bytes of events admitted for it (the registry's memory bound)
        self.left_at: int | None = None  # tokens when the last reader left (None: one is attached)
        self.wasted = 0  # tokens generated after the last reader left, for nobody who came back
        self.ended_at: float | None = None
        self.progress_mark = 0
        self.progress_at = now
        self._on_event = on_event  # lifecycle hook (stream, what, subscriber=None): metrics and logs
        self.on_append: Callable[[Stream], None] | None = None  # a shared store persisting the log
        self.log.append(_META, to_json(Meta(stream_id, model, self.created)))

    # -- the sink a source writes into --------------------------------------

    def token(self, text: str) -> None:
        if self.status is not RUNNING:
            return
        self.tokens += 1
        unhashed = self._unhashed
        unhashed.append(text)
        if len(unhashed) == 16:
            self._hash.update("".join(unhashed).encode())
            unhashed.clear()
        log = self.log
        log.append(_TOKEN, token_json(len(log.kinds), text))
        if len(log.kinds) >= self.settle_at:
            self.settle()
        if self.tokens == 1:
            self._on_event(self, "first_token")
        if self.on_append is not None:
            self.on_append(self)
        for sub in self.subs:
            sub.wake()

    def fail(self, code: str, message: str, retryable: bool = False) -> None:
        if self.status is not RUNNING:
            return
        self.error_code = code
        self._end(FAILED, _ERROR, to_json(Error(len(self.log), code, message, retryable)))

    def finish(self, finish_reason: str = "stop") -> None:
        if self.status is not RUNNING:
            return
        self.finish_reason = finish_reason
        self._end(DONE, _DONE, to_json(Done(len(self.log), finish_reason, self.tokens, self.sha256)))

    def _end(self, status: str, kind: int, json: bytes) -> None:
        self.status = status
        if self.left_at is not None:
            self.wasted, self.left_at = self.tokens - self.left_at, None
        self.log.append(kind, json)
        # What only a running stream needs goes: an ended one is kept for resume, maybe minutes.
        self.generation = self._hash = self._unhashed = None
        self.settle()
        self._on_event(self, "ended")
        if self.on_append is not None:
            self.on_append(self)
        for sub in self.subs:
            sub.wake()

    # -- control ------------------------------------------------------------

    def cancel(self, reason: str) -> bool:
        """Stop generation and end the stream with a `cancelled` error."""
        if self.status is not RUNNING:
            return False
        gen = self.generation
        if gen is not None:
            gen.cancel()
        self._on_event(self, "cancelled:" + reason)
        self.fail("cancelled", f"stream cancelled ({reason})", False)
        return True

    def kick(self) -> None:
        """Ask every client that can resume to reconnect (to another replica): this one is draining."""
        for sub in self.subs:
            if sub.conn.transport in RESUMABLE:
                sub.kicked = sub.gone = True
                sub.wake()

    @property
    def running(self) -> bool:
        return self.status is RUNNING

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the text so far (what the done event carries)."""
        h, unhashed = self._hash, self._unhashed
        if h is None:  # ended: the done event has it; a failed stream's is the log's text's
            log = self.log
            if self.status is DONE:
                return from_json(log.json(len(log) - 1)).sha256
            return hashlib.sha256(self.text().encode()).hexdigest()
        if unhashed:
            h.update("".join(unhashed).encode())
            unhashed.clear()
        return h.hexdigest()

    @property
    def last_seq(self) -> int:
        return len(self.log) - 1

    # -- readers ------------------------------------------------------------

    def attach(self, after: int, transport: str, now: float) -> Subscriber:
        """A client reads every event after seq `after` (-1: from the start)."""
        drop_at = None
        if self.drop_after is not None and after < self.drop_after:
            drop_at = self.drop_after + 1  # deliver meta and N tokens, then cut
            # Once per stream: a browser can lose the last chunk before a cut (Chromium's fetch
            # does, often), resume from before N, and would be cut again at N for ever.
            self.drop_after = None
        sub = Subscriber(after + 1, Connection(transport, now, drop_at))
        self.subs.append(sub)
        self.detached_since = self.left_at = None
        self._on_event(self, "attached", sub)
        return sub

    def detach(self, sub: Subscriber, now: float, client_left: bool) -> None:
        try:
            self.subs.remove(sub)
        except ValueError:
            return
        sub.push = None
        sub.wake()
        conn = sub.conn
        if conn.cut is None and (self.status is RUNNING or sub.cursor < len(self.log)):
            conn.cut = "client_left" if client_left else "server"
        if conn.cut is not None:
            self._on_event(self, "cut", sub)
        if self.subs:
            return
        self.detached_since = now
        if self.status is not RUNNING:
            self.settle()
            return
        # A lost connection is not a cancel: the stream goes on for the grace, so the client can
        # resume; unless the policy says otherwise or the transport cannot resume (chat, complete).
        if conn.cut == "client_left" and (self.leave_cancels or conn.transport not in RESUMABLE):
            self.cancel("client_gone")
        else:
            self.left_at = self.tokens

    def settle(self) -> None:
        """Seal what no attached reader still needs from the log's tail: all of an ended stream nobody
        reads; else whole blocks every reader has passed, leaving TAIL events at least."""
        log = self.log
        subs = self.subs
        if self.status is not RUNNING and not subs:
            log.seal(len(log.kinds), 0)
            return
        n = len(log.kinds)
        upto = n - TAIL
        for sub in subs:
            if sub.cursor < upto:
                upto = sub.cursor
        log.seal(upto)
        # Next when the tail is a block past its slack again, or (a reader held it back) a little later.
        self.settle_at = n + max(TAIL, SEAL_AT - len(log.ends))

    async def wait(self, sub: Subscriber) -> None:
        """Return once `sub` has events to read, a heartbeat is due, or it is gone."""
        fut = self.parked(sub)
        if fut is None:
            return
        try:
            await fut
        finally:
            sub.waiter = None

    def parked(self, sub: Subscriber) -> asyncio.Future | None:
        """What `wait` awaits: a future done once `sub` has events to read, a heartbeat is due, or it is
        gone (`Subscriber.resolve`); None when one of those holds already. The awaiting task clears
        `sub.waiter` when it resumes."""
        if sub.cursor < len(self.log) or sub.beat or sub.gone:
            return None
        fut = sub.waiter = asyncio.get_running_loop().create_future()
        return fut

    def text(self) -> str:
        """The text so far, from the log (the log is the only copy)."""
        log = self.log
        return "".join(from_json(log.json(i)).text for i in range(len(log)) if log.kinds[i] == _TOKEN)

    def status_info(self) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "status": self.status, "created": self.created,
            "tokens": self.tokens, "last_seq": self.last_seq, "clients": len(self.subs),
            "finish_reason": self.finish_reason, "error": self.error_code,
        }
