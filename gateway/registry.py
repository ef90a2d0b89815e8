"""Creates streams, starts their sources, and runs the one sweep that keeps them honest.

The sweep (on the shared clock) sends heartbeats to quiet connections, cuts
connections whose writes stay blocked (slow consumers), ends streams whose
source went silent, cancels streams nobody came back to, and expires ended
streams.
"""

from __future__ import annotations

import secrets
from collections import Counter

from . import memory
from .clock import Clock
from .journal import Journal
from .metrics import Stats
from .models import StreamRequest
from .settings import Settings
from .sources.base import Source
from .sources.table import build_sources
from .sources.simulated import SimulatedModel
from .store.base import StreamStore
from .problems import Problem
from .stream import FAILED, Stream, Subscriber

__all__ = ["Registry", "UnknownModel"]


class UnknownModel(LookupError):
    pass


TOKEN_BYTES = 64  # what a token event may take in a stream's log, for admission (a word is ~45)
ALL = object()


def _too_many(stats: Stats, limit: int) -> Problem:
    stats.refused["streams"] += 1
    return Problem(429, "Too many streams", f"this key has {limit} streams generating already",
                   retry_after=1, code="too_many_streams")


class Registry:
    def __init__(self, settings: Settings, clock: Clock, stats: Stats, store: StreamStore) -> None:
        self.settings = settings
        self.clock = clock
        self.stats = stats
        self.store = store
        sim = SimulatedModel(clock, settings.sim_ttft_ms, settings.sim_itl_ms, settings.sim_jitter)
        self.sources: dict[str, Source] = {"sim": sim}
        self.sources.update(build_sources(settings.models, settings.idle_timeout_s))
        self.journal = Journal(settings)
        self.running: Counter[str | None] = Counter()  # streams generating, by owner key id
        # Bytes of events kept (as of the last sweep) plus what running streams may still add, by key.
        self.kept: Counter[str | None] = Counter()
        self.committed: Counter[str | None] = Counter()
        self.reclaim_at = float("inf")  # next full GC and malloc_trim, on the sweep

    def start(self) -> None:
        if self.settings.reclaim_s:
            self.reclaim_at = self.clock.now() + self.settings.reclaim_s
        self.clock.every(self.settings.sweep_s, self.sweep)

    async def aclose(self) -> None:
        for source in self.sources.values():
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()

    def source(self, model: str | None) -> tuple[str, Source]:
        name = model or self.settings.model
        try:
            return name, self.sources[name]
        except KeyError:
            raise UnknownModel(name) from None

    async def create(self, request: StreamRequest, *, one_shot: bool, owner_key: str | None = None) -> Stream:
        """Start generating; raises Problem, PreStreamError or UnknownModel before any stream exists.

        The stream is counted (per key and in the gauge) before the first await: concurrent creates
        see each other, so `streams_per_key` holds; a shared store also holds it across replicas.
        """
        name, source = self.source(request.model)
        limit = self.settings.streams_per_key
        if limit and self.running.get(owner_key, 0) >= limit:
            raise _too_many(self.stats, limit)
        budget = request.max_tokens * TOKEN_BYTES + 1024
        self._admit(owner_key, budget)
        stream = Stream(
            secrets.token_urlsafe(18),  # 144 random bits: ids are unguessable
            name,
            one_shot=one_shot,
            now=self.clock.now(),
            on_event=self._on_event,
            drop_after=request.sim.drop_after,
            owner_key=owner_key,
        )
        stream.leave_cancels = one_shot and self.settings.disconnect == "cancel"
        stream.budget = budget
        self.committed[owner_key] += budget
        self.stats.active_streams += 1
        self.running[owner_key] += 1
        try:
            if limit and not await self.store.reserve(stream, limit):
                raise _too_many(self.stats, limit)
            stream.generation = await source.start(request, stream)
            await self.store.add(stream)
        except BaseException:
            self._discard(stream)
            raise
        self.stats.streams_created += 1
        self.journal.created(stream, request)
        return stream

    def _discard(self, stream: Stream) -> None:
        """A create that failed: stop what started and take back what was counted, exactly once."""
        gen = stream.generation
        if gen is not None:
            gen.cancel()
        if stream.ended_at is None:  # not ended yet: end it silently (no journal line, no error count)
            stream.status = FAILED
            stream.generation = None
            stream.ended_at = self.clock.now()
            self._uncount(stream)
        else:  # it ended during the awaits and was uncounted then: it was never created
            if stream.status == "done":
                self.stats.finished -= 1
            else:
                self.stats.errors[stream.error_code or "error"] -= 1
        self.store.release(stream)

    def _uncount(self, stream: Stream) -> None:
        key = stream.owner_key
        self.committed[key] -= stream.budget
        self.kept[key] += stream.log.size  # it stays kept (for resume) until evicted or expired
        self.stats.active_streams -= 1
        left = self.running[stream.owner_key] - 1
        if left > 0:
            self.running[stream.owner_key] = left
        else:
            del self.running[stream.owner_key]

    def _on_event(self, stream: Stream, what: str, sub: Subscriber | None = None) -> None:
        stats = self.stats
        if what == "first_token":
            stats.ttft.observe(self.clock.now() - stream.started)
        elif what == "ended":
            stream.ended_at = self.clock.now()
            self._uncount(stream)
            stats.wasted_tokens += stream.wasted
            if stream.status == "done":
                stats.finished += 1
            else:
                stats.errors[stream.error_code or "error"] += 1
            self.journal.ended(stream, stream.ended_at)
        elif what == "attached":
            self.journal.attached(stream, sub)
        elif what == "cut":
            self.journal.cut(stream, sub, self.clock.now())
        elif what.startswith("cancelled:"):
            stats.cancelled[what[10:]] += 1
            stream.info["cancelled"] = what[10:]

    def _cut_slow(self, sub: Subscriber, why: str) -> None:
        """Drop a connection whose writes are stuck; its stream goes on, so the client can resume."""
        conn = sub.conn
        conn.cut = why
        sub.gone = True
        self.stats[conn.transport].slow_cuts += 1
        if conn.abort is not None:
            conn.abort()  # wakes the blocked write; the transport then detaches as usual
        sub.wake()

    def _admit(self, key: str | None, budget: int) -> None:
        """Room for a new stream's events, within the process's and the key's bounds; raises Problem."""
        s = self.settings
        total, per_key = s.max_kept_bytes, s.max_kept_bytes_per_key
        for bound, used, scope in ((per_key, lambda: self.kept[key] + self.committed[key], key),
                                   (total, lambda: sum(self.kept.values()) + sum(self.committed.values()), ALL)):
            if not bound or used() + budget <= bound:
                continue
            for stream in self.store.evict(used() + budget - bound, None if scope is ALL else key):
                self.kept[stream.owner_key] -= stream.log.size
                self.stats.evicted += 1
            if used() + budget > bound:
                self.stats.refused["kept_bytes"] += 1
                if scope is ALL:
                    raise Problem(503, "Over capacity", "this replica keeps as many stream events as it may: "
                                  "try again soon, or another replica", retry_after=1, code="over_capacity")
                raise Problem(429, "Too much kept", "this key's streams hold as many events as it may keep: "
                              "let some end or expire", retry_after=1, code="too_much_kept")

    def sweep(self, now: float) -> None:
        s = self.settings
        heartbeat, idle, grace = s.heartbeat_s, s.idle_timeout_s, s.detach_grace_s
        send_timeout, max_lag = s.send_timeout_s, s.max_lag_bytes
        kept: Counter[str | None] = Counter()
        for stream in self.store.local():
            size = stream.log.nbytes
            if not stream.running:
                kept[stream.owner_key] += stream.log.size
            for sub in stream.subs:
                conn = sub.conn
                if conn.sending and not sub.gone:
                    if conn.sending != conn.blocked:  # a write the sweep has not seen blocked before
                        conn.blocked, conn.lag_base = conn.sending, size
                    if now - conn.sending >= send_timeout:
                        self._cut_slow(sub, "slow_send")
                    elif size - conn.lag_base > max_lag:  # the stream ran this far ahead meanwhile
                        self._cut_slow(sub, "slow_lag")
                if sub.cursor != conn.mark:
                    conn.mark = sub.cursor
                    conn.quiet_since = now
                elif now - conn.quiet_since >= heartbeat:
                    sub.beat = True
                    conn.quiet_since = now
                    sub.wake()
            if not stream.running or stream.generation is None:
                continue
            if len(stream.log) != stream.progress_mark:
                stream.progress_mark = len(stream.log)
                stream.progress_at = now
            elif now - stream.progress_at >= idle:
                gen = stream.generation
                gen.cancel()
                stream.fail("upstream_timeout", f"no output from the model for {idle:g} s", True)
                continue
            if not stream.subs and not stream.keep and stream.detached_since is not None and now - stream.detached_since >= grace:
                stream.cancel("detached")
        self.store.sweep(now)
        self.kept = kept  # (streams the store dropped just now are counted until the next sweep)
        if now >= self.reclaim_at:  # cycles freed, heap pages returned (gateway/memory.py)
            self.reclaim_at = now + s.reclaim_s
            memory.reclaim()
