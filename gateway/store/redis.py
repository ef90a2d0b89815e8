"""Streams shared by several replicas, kept in Redis Streams.

Keys of one stream (the `{id}` hash tag keeps them in one cluster slot):

    gw:{id}:log    a Redis stream, one entry per event: id `1-<seq>`, fields k (kind) and j (JSON)
    gw:{id}:meta   a hash: owner (replica), key (API key id), status, created, model (at the end: finish_reason or error, tokens)

and of one replica: `gw:lease:<rid>` (a key it refreshes while it lives) and `gw:ctl:<rid>` (a pub/sub
channel for cancel and keep-alive requests about the streams it generates).

The entry id is the seq, so a resume point maps to an XRANGE/XREAD bound with no lookup, and every
append goes through one script that adds events only right after the current last one: a second
writer (a replica declaring the generator lost) can never interleave with the generator.

Writing: a stream generated here appends to its local log as usual; `on_append` marks it dirty and one
flusher task writes whatever is new, for every stream, in one pipeline per round trip, so the token
path never awaits Redis. Reading: a stream generated elsewhere is served from a local `Mirror`, fed by
ONE reader task per process that follows every mirrored stream in a single blocking XREAD (from the
last id received, never `$`) and fans events out in memory to all local clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..events import dumps
from ..journal import Journal
from ..log import KIND, EventLog
from ..stream import DONE, FAILED, SEAL_AT, Stream
from .base import StoreUnavailable
from .memory import evict_oldest

if TYPE_CHECKING:
    from ..clock import Clock
    from ..metrics import Stats
    from ..settings import Settings

__all__ = ["RedisStore", "Mirror"]

log = logging.getLogger("gateway.store")

# Redis cannot serve us: unreachable, or refusing writes (at `maxmemory` with noeviction, a read-only replica).
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError, ReadOnlyError)
_META, _TOKEN, _ERROR, _DONE = KIND["meta"], KIND["token"], KIND["error"], KIND["done"]
_KEEP_S = 5.0  # local copies nobody reads are dropped after this; Redis still has them
_TOMBSTONE_S = 86_400  # the meta hash outlives the log by this much: 410 rather than 404
_BLOCK_MS = 2_000  # the reader's XREAD returns at least this often (new mirrors also interrupt it)
_BATCH = 4096  # events per flush round trip
_CUT_MSG = "the stream store (Redis) is unreachable"
_LOST_MSG = "the stream store (Redis) lost this stream's events (restarted without persistence)"
# How long a resume past a mirror's end waits for the event its client saw elsewhere (the generator's
# flusher may not have written it yet): a point still past the end after this is refused (409).
_CATCH_UP_S = 2.0

# One call appends a whole round for every stream: KEYS are their logs; ARGV is maxlen, then per stream
# first seq, kinds (one digit per event) and the events as NDJSON lines (a slice of the local log: two
# arguments per stream, not two per event). A stream's events go in only if its log ends at first-1;
# entries already there and equal to ours are a retried round trip and are skipped. Per stream it
# returns the new length, -1 if the log is gone (expired, or Redis lost its data), or -2 - top if
# someone else appended (a replica that took the generator for lost). A round from seq 0 writes a log
# that is gone afresh (the generator restores what Redis lost).
_APPEND = b"""
local out = {}
for s = 1, #KEYS do
  local key, first = KEYS[s], tonumber(ARGV[3 * s - 1])
  local kinds, lines = ARGV[3 * s], ARGV[3 * s + 1]
  local n = #kinds
  local events, pos = {}, 1
  for i = 1, n do
    local e = string.find(lines, '\\n', pos, true)
    events[i] = string.sub(lines, pos, e - 1)
    pos = e + 1
  end
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  local skip = 0
  if #last == 0 then
    if first ~= 0 then
      out[s], skip = -1, -1
    end
  else
    local top = tonumber(string.sub(last[1][1], 3))
    if top ~= first - 1 then
      if top >= first and top < first + n and last[1][2][4] == events[top - first + 1] then
        skip = top - first + 1
      else
        out[s], skip = -2 - top, -1
      end
    end
  end
  if skip >= 0 then
    for i = skip + 1, n do
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[1], '1-' .. (first + i - 1),
                 'k', string.sub(kinds, i, i), 'j', events[i])
    end
    out[s] = first + n
  end
end
return out
"""
_APPEND_SHA = hashlib.sha1(_APPEND).hexdigest()

# STREAMS_PER_KEY across replicas: a sorted set per key of its generating streams, scored by when their
# reservation lapses (Redis's clock). One script drops lapsed ones, checks the count and adds, atomically;
# the owner's tick renews its streams (limit 0: renew without a check), their end removes them.
_RESERVE = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] ~= '0' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_RESERVE_SHA = hashlib.sha1(_RESERVE).hexdigest()
_DIGITS = bytes.maketrans(bytes(range(10)), b"0123456789")  # log kinds as the digits Redis stores


def _log_key(stream_id: str) -> str:
    return f"gw:{{{stream_id}}}:log"


def _meta_key(stream_id: str) -> str:
    return f"gw:{{{stream_id}}}:meta"


def _lease_key(rid: str) -> str:
    return f"gw:lease:{rid}"


def _ctl_channel(rid: str) -> str:
    return f"gw:ctl:{rid}"


def _running_key(key_id: str | None) -> str:
    return f"gw:running:{key_id or ''}"


class Mirror(Stream):
    """A local copy of a stream generated by another replica, fed by the store's one reader."""

    def __init__(self, store: RedisStore, stream_id: str, meta: dict, entries: list, now: float) -> None:
        super().__init__(stream_id, meta[b"model"].decode(), one_shot=False, now=now, on_event=store.mirror_event,
                         owner_key=meta.get(b"key", b"").decode() or None)
        self.store = store
        self.owner = meta[b"owner"].decode()
        self.created = float(meta[b"created"])
        self.log = EventLog()  # refilled from Redis: the meta event too, byte for byte
        self.key = store._log_key(stream_id).encode()
        self.last_at = now  # when the last event arrived: generator_lost counts from here
        self.checked_at = now
        self.feed(entries, now)

    def feed(self, entries: list, now: float) -> None:
        log = self.log
        for eid, fields in entries:
            seq = int(eid[2:])  # b"1-<seq>"
            if seq != len(log):
                if seq < len(log):
                    continue
                self.cut("store_gap", f"events {len(log)}..{seq - 1} are missing from the store")
                return
            kind = int(fields[b"k"])
            json = fields[b"j"]
            log.append(kind, json)
            if kind == _TOKEN:
                self.tokens += 1
            elif kind == _DONE or kind == _ERROR:
                obj = orjson.loads(json)
                if kind == _DONE:
                    self.status, self.finish_reason = DONE, obj.get("finish_reason")
                else:
                    self.status, self.error_code = FAILED, obj.get("code")
                self.ended_at = now
                break
        self.last_at = now
        if len(log.ends) >= SEAL_AT or not self.running:
            self.settle()
        for sub in self.subs:
            sub.wake()

    def cut(self, code: str, message: str) -> None:
        """End this copy only (the store cannot be read): clients get an in-band error."""
        if not self.running:
            return
        self.log.append(_ERROR, dumps({"type": "error", "seq": len(self.log), "code": code,
                                              "message": message, "retryable": True}))
        self.status, self.error_code = FAILED, code
        self.ended_at = self.store.clock.now()
        self.store.mirrors.pop(self.id, None)  # the next attach reads Redis afresh
        for sub in self.subs:
            sub.wake()

    def cancel(self, reason: str) -> bool:
        if not self.running:
            return False
        self.store.spawn(self.store.cancel(self.id, reason))
        return True


class _Owned:
    """A stream generated here, and how much of it Redis has."""

    __slots__ = ("stream", "flushed", "refreshed_at", "lost", "restored")

    def __init__(self, stream: Stream, now: float) -> None:
        self.stream = stream
        self.flushed = 1  # meta is written by `add`
        self.refreshed_at = now
        self.lost = False  # Redis no longer has it (or someone else ended it): stop writing
        self.restored = False  # Redis lost it once and this replica wrote it back (once only)


class _Reader:
    """One shard's reader: a connection blocked in XREAD over the shard's mirrored streams."""

    __slots__ = ("shard", "client", "kick", "id", "blocked", "round", "wake")

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.client: Any = None
        self.kick: Any = None  # CLIENT UNBLOCK goes through this one (the same node on a cluster)
        self.id: int | None = None  # the reader connection's CLIENT ID
        self.blocked = False
        self.round = 0  # XREAD calls returned
        self.wake = asyncio.Event()


class RedisStore:
    shared = True

    def __init__(self, settings: Settings, clock: Clock, stats: Stats) -> None:
        s = settings
        self.settings = settings
        self.clock = clock
        self.journal = Journal(settings)
        self.rid = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.ttl_ms = int(s.ttl_s * 1000)
        # While running, keys outlive any silence the idle timeout allows; refreshed as events go in.
        self.live_ttl_ms = int((s.ttl_s + s.idle_timeout_s) * 1000)
        self.lease_ms = int(max(1.0, s.idle_timeout_s / 2) * 1000)
        self.tick_s = max(0.05, min(1.0, self.lease_ms / 3000, (s.detach_grace_s or 3.0) / 3))
        self.maxlen = s.max_tokens_limit + 16  # a bound that never cuts a legal stream
        self.owned: dict[str, _Owned] = {}
        self.mirrors: dict[str, Mirror] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._dirty: dict[str, Stream] = {}
        self._tasks: list[asyncio.Task] = []
        self._reader_task: asyncio.Task | None = None
        self._spawned: set[asyncio.Task] = set()
        self._readers: list[_Reader] = []  # one per shard (`_shards`): one here, one per node on a cluster
        self.down_since: float | None = None
        self.reads = self.events_read = self.events_written = self.flushes = 0
        self.redis: Redis | None = None
        self.reserved: dict[str, str | None] = {}  # stream id -> key id, held in gw:running:<key>
        stats.registry.register(_Metrics(self))

    # Key layout; the cluster store (gateway/store/cluster.py) puts streams in a few shared slots.
    def _log_key(self, stream_id: str) -> str:
        return _log_key(stream_id)

    def _meta_key(self, stream_id: str) -> str:
        return _meta_key(stream_id)

    def _group(self, stream_id: str) -> Any:
        """Streams whose appends can share one script call (their keys share a slot)."""
        return None

    # Control channel; the cluster store uses sharded pub/sub (a PUBLISH count is one node's there).
    def _publish(self, client: Any, channel: str, message: str) -> Any:
        return client.publish(channel, message)

    async def _pubsub(self, channel: str) -> Any:
        return self.ctl.pubsub()

    async def _subscribe(self, pubsub: Any, channel: str) -> None:
        await pubsub.subscribe(channel)

    def mirror_event(self, stream: Stream, what: str, sub: Any = None) -> None:
        """Lifecycle lines for the clients this replica serves from a mirror (the owner logs the rest)."""
        if what == "attached":
            self.journal.attached(stream, sub)
        elif what == "cut":
            self.journal.cut(stream, sub, self.clock.now())

    # -- lifecycle ------------------------------------------------------------

    def _client(self, name: str, size: int, socket_timeout: float | None) -> Redis:
        pool = BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=size, timeout=2.0,
            socket_timeout=socket_timeout, socket_connect_timeout=1.0,
            client_name=f"gw:{self.rid}:{name}",
            # One quick retry: a pooled connection may be stale after Redis restarted.
            retry=Retry(NoBackoff(), 1),
        )
        return Redis(connection_pool=pool)

    async def open(self) -> None:
        self._kick = asyncio.Event()
        self._readers = [_Reader(shard) for shard in range(self._shards())]
        self._loads = asyncio.Semaphore(max(1, self.settings.redis_pool_size - 3))
        self.redis = self._client("pool", self.settings.redis_pool_size, 2.0)
        self.reader = self._client("reader", 1, _BLOCK_MS / 1000 + 3.0)
        self.ctl = self._client("ctl", 1, None)
        self._reserve = self.redis.register_script(_RESERVE)
        try:
            await self.redis.script_load(_APPEND)
            await self.redis.script_load(_RESERVE)
            await self.redis.set(_lease_key(self.rid), b"1", px=self.lease_ms)
        except _DOWN as exc:
            self._failing("open", exc)
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read_loop())
        self._tasks = [self._reader_task, *(loop.create_task(f()) for f in (self._flush_loop, self._ctl_loop,
                                                                            self._tick_loop))]

    async def close(self) -> None:
        await self.flush(2.0)
        for task in [*self._tasks, *self._spawned]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        if self.redis is not None:
            try:
                await self.redis.delete(_lease_key(self.rid))
            except _DOWN:
                pass
            for client in (self.redis, self.reader, self.ctl):
                await client.aclose()

    @property
    def ready(self) -> bool:
        """False while Redis cannot take writes (unreachable, or full): new streams would fail here."""
        return self.down_since is None

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # -- the store interface --------------------------------------------------

    async def add(self, stream: Stream) -> None:
        sid = stream.id
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._meta_key(sid), mapping=_meta_fields(self.rid, stream))
                pipe.execute_command("XADD", self._log_key(sid), "MAXLEN", "~", self.maxlen, "1-0",
                                     "k", _META, "j", stream.log.json(0))
                pipe.pexpire(self._log_key(sid), self.live_ttl_ms)
                pipe.pexpire(self._meta_key(sid), self.live_ttl_ms + _TOMBSTONE_S * 1000)
                await pipe.execute()
        except _DOWN as exc:
            self._failing("add", exc)
            raise StoreUnavailable() from None
        self._ok()
        self.owned[sid] = _Owned(stream, self.clock.now())
        stream.on_append = self._touch
        if len(stream.log) > 1:  # tokens may have come while the meta was written
            self._touch(stream)

    async def reserve(self, stream: Stream, limit: int) -> bool:
        try:
            ok = await self._reserve([_running_key(stream.owner_key)], [limit, stream.id, self.lease_ms])
        except _DOWN as exc:
            self._failing("reserve", exc)
            raise StoreUnavailable() from None
        if ok:
            self.reserved[stream.id] = stream.owner_key
        return bool(ok)

    def release(self, stream: Stream) -> None:
        if stream.id in self.reserved:
            self.spawn(self._release(stream.id, self.reserved.pop(stream.id)))

    async def _release(self, stream_id: str, key_id: str | None) -> None:
        try:
            await self.redis.zrem(_running_key(key_id), stream_id)
        except _DOWN:
            pass  # it lapses with its reservation

    async def get(self, stream_id: str) -> Stream | None:
        rec = self.owned.get(stream_id)
        if rec is not None:
            return rec.stream
        mirror = self.mirrors.get(stream_id)
        if mirror is not None:
            return mirror
        # Fifty clients attaching at once share one load (and then one mirror).
        task = self._loading.get(stream_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(stream_id))
            self._loading[stream_id] = task
            task.add_done_callback(lambda _: self._loading.pop(stream_id, None))
        return await asyncio.shield(task)

    async def catch_up(self, stream: Stream, seq: int) -> None:
        # The client read `seq` from another replica, ahead of the one reader here: read Redis directly
        # from the mirror's end. If the generator has not written it yet, the reader brings it when it does.
        if not isinstance(stream, Mirror) or not stream.running or stream.last_seq >= seq:
            return  # generated here, the local log is the newest copy; or nothing to wait for
        if stream.detached_since is not None:
            stream.detached_since = self.clock.now()  # a client is coming: the sweep keeps it followed
        try:
            entries = await self.redis.xrange(stream.key, b"1-%d" % len(stream.log), "+")
        except _DOWN as exc:
            self._failing("catch up", exc)
            raise StoreUnavailable() from None
        if entries and stream.running:  # feed skips what the reader delivered meanwhile
            self.events_read += len(entries)
            stream.feed(entries, self.clock.now())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CATCH_UP_S
        while stream.running and stream.last_seq < seq and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def expired(self, stream_id: str, owner_key: str | None = None) -> bool:
        try:
            key = await self.redis.hget(self._meta_key(stream_id), "key")
            return key is not None and (key.decode() or None) == owner_key
        except _DOWN:
            raise StoreUnavailable() from None

    async def cancel(self, stream_id: str, reason: str) -> bool | None:
        rec = self.owned.get(stream_id)
        if rec is not None:
            return rec.stream.cancel(reason)
        meta_key = self._meta_key(stream_id)
        try:
            meta = await self.redis.hgetall(meta_key)
            if not meta:
                return None
            if meta.get(b"status") != b"running":
                return False
            owner = meta[b"owner"].decode()
            heard = await self._publish(self.redis, _ctl_channel(owner), f"cancel {stream_id} {reason}")
            if not heard:
                # Nobody listens on the owner's channel: dead, or cut off from Redis.
                if await self.redis.exists(_lease_key(owner)):
                    raise StoreUnavailable("the replica generating this stream cannot be reached")
                return await self._end_remote(stream_id, "cancelled", f"stream cancelled ({reason})", False)
            # The owner cancels and writes the terminal event; wait to report what happened.
            for _ in range(100):
                await asyncio.sleep(0.02)
                status, error = await self.redis.hmget(meta_key, ["status", "error"])
                if status != b"running":
                    return error == b"cancelled"
            return True
        except _DOWN:
            raise StoreUnavailable() from None

    async def flush(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self._dirty and all(r.lost or r.flushed >= len(r.stream.log) for r in self.owned.values()):
                return
            await asyncio.sleep(0.02)

    def sweep(self, now: float) -> None:
        # Local copies are a cache of Redis: ended ones go soon (at most at the TTL, as in Redis).
        ttl = self.ttl_ms / 1000
        keep = min(ttl, _KEEP_S)
        for sid, rec in list(self.owned.items()):
            stream = rec.stream
            if stream.ended_at is None or stream.subs:
                continue
            stored = rec.lost or rec.flushed >= len(stream.log)
            if now - stream.ended_at > (keep if stored else ttl):
                del self.owned[sid]
                stream.on_append = None
                self._dirty.pop(sid, None)
        for sid, mirror in list(self.mirrors.items()):
            if mirror.subs:
                continue
            if mirror.ended_at is not None:
                if now - mirror.ended_at > keep:
                    del self.mirrors[sid]
            elif mirror.detached_since is not None and now - mirror.detached_since > _KEEP_S:
                del self.mirrors[sid]

    def evict(self, nbytes: int, owner_key: Any = None) -> list[Stream]:
        # Local copies only: Redis keeps the events (bounded by its maxmemory), so a resume still works.
        # An owned stream goes once Redis has all of it; a mirror at once.
        streams = {sid: rec.stream for sid, rec in self.owned.items() if rec.lost or rec.flushed >= len(rec.stream.log)}
        streams.update(self.mirrors)
        return evict_oldest(streams, nbytes, owner_key, self._drop_local)

    def _drop_local(self, stream: Stream) -> None:
        if self.owned.pop(stream.id, None) is not None:
            stream.on_append = None
            self._dirty.pop(stream.id, None)
        self.mirrors.pop(stream.id, None)

    def local(self) -> list[Stream]:
        return [rec.stream for rec in self.owned.values()] + list(self.mirrors.values())

    # -- reading: mirrors and the one reader ---------------------------------

    async def _load(self, stream_id: str) -> Mirror | None:
        down = self.down_since
        if down is not None and self.clock.now() - down >= self.settings.redis_outage_s:
            raise StoreUnavailable()  # what Redis says may be stale (a generator that cannot write)
        try:
            # Loads queue here rather than for the pool, whose wait ends in an error: a burst of
            # attaches must not starve the flusher and the lease, nor look like an outage.
            async with self._loads:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hgetall(self._meta_key(stream_id))
                    pipe.xrange(self._log_key(stream_id), "-", "+")
                    meta, entries = await pipe.execute()
        except _DOWN as exc:
            self._failing("load", exc)
            raise StoreUnavailable() from None
        if not meta or not entries or entries[0][0] != b"1-0" or b"owner" not in meta:
            return None
        mirror = self.mirrors.get(stream_id)  # a concurrent load may have won
        if mirror is None:
            mirror = Mirror(self, stream_id, meta, entries, self.clock.now())
            self.events_read += len(entries)
            self.mirrors[stream_id] = mirror
            if mirror.running:
                self._follow()
        return mirror

    def _follow(self) -> None:
        """A new mirror to follow: interrupt the readers' current XREADs so the next ones include it."""
        for reader in self._readers:
            reader.wake.set()
            if reader.blocked:
                self.spawn(self._unblock(reader, reader.round))

    async def _unblock(self, reader: _Reader, round_: int) -> None:
        # The XREAD may not have reached Redis yet: retry until that round returns.
        for _ in range(50):
            if reader.round != round_ or not reader.blocked or reader.id is None or reader.kick is None:
                return
            try:
                if await reader.kick.client_unblock(reader.id):
                    return
            except Exception:  # (Redis down, or the node gone in a failover: the reader reconnects)
                return
            await asyncio.sleep(0.005)

    async def _read_loop(self) -> None:
        await asyncio.gather(*(self._read_shard(reader) for reader in self._readers))

    async def _read_shard(self, reader: _Reader) -> None:
        """One reader: a blocking XREAD over every running mirror of its shard, fed to the mirrors."""
        backoff = 0.05
        sharded = len(self._readers) > 1
        window = self.settings.redis_read_window_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            following = {m.key: m for m in self.mirrors.values()
                         if m.running and (not sharded or self._shard(m.id) == reader.shard)}
            if not following:
                reader.wake.clear()
                await reader.wake.wait()
                continue
            streams = {key: b"1-%d" % (len(m.log) - 1) for key, m in following.items()}
            try:
                if reader.client is None:
                    reader.client, reader.kick = self._reader_clients(reader.shard)
                if reader.id is None:
                    reader.id = await reader.client.client_id()
                reader.wake.clear()
                reader.blocked = True
                began = loop.time()
                try:
                    reply = await reader.client.xread(streams, count=1024, block=_BLOCK_MS)
                finally:
                    reader.blocked = False
                    reader.round += 1
            except Exception as exc:
                retry = await self._reader_lost(reader, exc)
                if retry is not None:  # not a failure (on a cluster: the slot moved, or is moving)
                    await asyncio.sleep(retry)
                    continue
                self._trouble("read", exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            backoff = 0.05  # (reads succeeding do not end an outage: writes may still fail, `_ok`)
            self.reads += 1
            now = self.clock.now()
            for key, entries in reply or ():
                mirror = following.get(key)
                if mirror is not None and mirror.running:
                    self.events_read += len(entries)
                    mirror.feed(entries, now)
            if reply and window:
                await self._read_window(reader, began + window - loop.time())

    @staticmethod
    async def _read_window(reader: _Reader, rest: float) -> None:
        """Let events gather for the rest of the read window before the next XREAD. Each XREAD costs in
        proportion to the streams it follows (their keys and ids sent, the reply parsed): with 100 mirrors
        at 10 events/s each, reading again at once made 450-700 XREADs/s and a replica serving 1,000
        clients of them spent 1.6x the CPU (docs/scale.md "Reconnect storm"). A new mirror (`_follow` sets
        `wake`) ends the wait: its first client is waiting."""
        if rest > 0:
            try:
                await asyncio.wait_for(reader.wake.wait(), rest)
            except TimeoutError:
                pass

    # Readers per shard; the cluster store has one per shard, each on a connection to its node.
    def _shards(self) -> int:
        return 1

    def _shard(self, stream_id: str) -> int:
        return 0

    def _reader_clients(self, shard: int) -> tuple[Any, Any]:
        """The reader's connection (blocked in XREAD) and the one its CLIENT UNBLOCK goes through."""
        return self.reader, self.redis

    async def _reader_lost(self, reader: _Reader, exc: Exception) -> float | None:
        """A read failed: the pooled client reconnects by itself; its connection id is new then. Returns
        None (a failure: logged, retried with backoff), or a delay to read again after (the cluster store)."""
        reader.id = None
        return None

    # -- writing: one flusher for every stream generated here ---------------

    def _touch(self, stream: Stream) -> None:
        self._dirty[stream.id] = stream
        self._kick.set()

    async def _flush_loop(self) -> None:
        backoff = 0.05
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self._dirty:
                continue
            batch, self._dirty = self._dirty, {}
            try:
                await self._write(batch)
            except Exception as exc:
                # The local logs are the backlog: write them when Redis is back.
                for sid, stream in batch.items():
                    self._dirty.setdefault(sid, stream)
                self._trouble("write", exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                self._kick.set()
                continue
            backoff = 0.05
            self._ok()

    async def _write(self, batch: dict[str, Stream]) -> None:
        now = self.clock.now()
        # One append call per group (`_group`: one for every stream here; one per slot in a cluster).
        groups: dict[Any, tuple[list, list[str], list[Any]]] = {}  # group -> plan, keys, args
        after: list[tuple[str, bool]] = []  # streams whose keys' TTLs to set: id, ended
        count = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, stream in batch.items():
                rec = self.owned.get(sid)
                if rec is None or rec.lost:
                    continue
                log, start, end = stream.log, rec.flushed, len(stream.log)
                if start >= end:
                    continue
                if count >= _BATCH:
                    self._dirty.setdefault(sid, stream)  # the next round trip
                    self._kick.set()
                    continue
                plan, keys, args = groups.setdefault(self._group(sid), ([], [], [self.maxlen]))
                keys.append(self._log_key(sid))
                args += (start, log.kinds[start:end].translate(_DIGITS), log.ndjson(start, end))
                plan.append((rec, start, end))
                count += end - start
                ended = not stream.running
                if start == 0:  # Redis lost it: the meta goes back with the log
                    pipe.hset(self._meta_key(sid), mapping=_meta_fields(self.rid, stream))
                if ended or start == 0 or now - rec.refreshed_at > self.ttl_ms / 2000:
                    rec.refreshed_at = now
                    after.append((sid, ended))
                    if ended:
                        pipe.hset(self._meta_key(sid), mapping=_end_fields(stream))
                        if sid in self.reserved:
                            pipe.zrem(_running_key(self.reserved.pop(sid)), sid)
            if not groups:
                return
            at = len(pipe)
            for _, keys, args in groups.values():
                # (EVALSHA by name: redis-py's cluster pipeline refuses its `evalsha` method, not the command)
                pipe.execute_command("EVALSHA", _APPEND_SHA, len(keys), *keys, *args)
            for sid, ended in after:  # after the append, which may create the log
                ttl = self.ttl_ms if ended else self.live_ttl_ms
                pipe.pexpire(self._log_key(sid), ttl)
                pipe.pexpire(self._meta_key(sid), ttl + _TOMBSTONE_S * 1000)
            replies = (await pipe.execute(raise_on_error=False))[at:at + len(groups)]
        self.flushes += 1
        failed = None  # a group not written (a cluster node down); the others count as written
        for (plan, _, _), results in zip(groups.values(), replies):
            if isinstance(results, NoScriptError):
                # Redis restarted and lost the script: load it, then write the round again.
                await self.redis.script_load(_APPEND)
                for rec, _, _ in plan:
                    self._touch(rec.stream)
                continue
            if isinstance(results, Exception):
                for rec, _, _ in plan:  # written again; what went in is skipped as a retried round trip
                    self._touch(rec.stream)
                failed = results
                continue
            for (rec, start, end), result in zip(plan, results):
                if isinstance(result, Exception):
                    raise result
                if result == end:
                    rec.flushed = end
                    self.events_written += end - start
                else:
                    self._lost(rec, result)
        if failed is not None:
            raise RedisConnectionError(str(failed))

    def _lost(self, rec: _Owned, result: int) -> None:
        stream = rec.stream
        if result == -1:
            if rec.restored:
                rec.lost = True
                log.warning("stream %s is gone from Redis again: no longer stored", stream.id)
                return
            # Redis lost it (a restart without persistence): this replica holds every event. End the
            # stream with `store_lost` (the generation cannot go on unstored: readers elsewhere would
            # wait for events that never come) and write it all back, so every replica's readers get
            # the partial text and the same end.
            log.warning("stream %s is gone from Redis (Redis lost its data): writing it back, ended", stream.id)
            rec.restored = True
            rec.flushed = 0
            if stream.running:
                gen = stream.generation
                if gen is not None:
                    gen.cancel()
                stream.fail("store_lost", _LOST_MSG, True)
            self._touch(stream)
            return
        rec.lost = True
        # Another replica ended it (it took this replica for dead): stop generating.
        log.warning("stream %s was ended by another replica at seq %d", stream.id, -2 - result)
        if stream.running:
            gen = stream.generation
            if gen is not None:
                gen.cancel()
            stream.fail("generator_lost", "another replica ended this stream: it took this one for lost", True)

    async def _end_remote(self, stream_id: str, code: str, message: str, retryable: bool,
                          owner: str | None = None) -> bool | None:
        """Append a terminal error for a stream whose generator cannot: True if it did so."""
        log_key, meta_key = self._log_key(stream_id), self._meta_key(stream_id)
        for _ in range(8):
            if owner is not None and await self.redis.exists(_lease_key(owner)):
                return None  # its generator is alive after all
            last = await self.redis.xrevrange(log_key, count=1)
            if not last:
                return None
            eid, fields = last[0]
            top = int(eid[2:])
            if int(fields[b"k"]) in (_DONE, _ERROR):
                return False
            event = dumps({"type": "error", "seq": top + 1, "code": code, "message": message,
                                  "retryable": retryable})
            try:
                [result] = await self.redis.evalsha(_APPEND_SHA, 1, log_key, self.maxlen, top + 1,
                                                    str(_ERROR), event + b"\n")
            except NoScriptError:
                await self.redis.script_load(_APPEND)
                continue
            if result == top + 2:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(meta_key, mapping={"status": "error", "error": code})
                    pipe.pexpire(log_key, self.ttl_ms)
                    pipe.pexpire(meta_key, self.ttl_ms + _TOMBSTONE_S * 1000)
                    await pipe.execute()
                log.warning("stream %s ended here with %s at seq %d", stream_id, code, top + 1)
                return True
            # An event went in meanwhile: look again.
        return None

    # -- control: cancel and keep-alive requests, lease, liveness -----------

    async def _ctl_loop(self) -> None:
        channel = _ctl_channel(self.rid)
        backoff = 0.05
        while True:
            pubsub = await self._pubsub(channel)
            try:
                await self._subscribe(pubsub, channel)
                backoff = 0.05
                async for message in pubsub.listen():
                    if message["type"] in ("message", "smessage"):
                        self._control(message["data"])
                    elif message["type"] == "sunsubscribe":  # the server ended it: on a cluster, the
                        break  # channel's slot moved (ClusterStore._locate); subscribe again where it is now
            except Exception as exc:
                self._trouble("control", exc)
            finally:
                try:
                    await pubsub.aclose()
                except _DOWN:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    def _control(self, data: bytes) -> None:
        verb, _, rest = data.decode("utf-8", "replace").partition(" ")
        sid, _, reason = rest.partition(" ")
        rec = self.owned.get(sid)
        if rec is None or not rec.stream.running:
            return
        if verb == "cancel":
            rec.stream.cancel(reason[:40] or "remote")
        elif verb == "reading" and not rec.stream.subs:
            # Its clients read through another replica: the detach grace starts over.
            rec.stream.detached_since = self.clock.now()

    async def _tick_loop(self) -> None:
        idle = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock.now()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(_lease_key(self.rid), b"1", px=self.lease_ms)
                    for mirror in self.mirrors.values():
                        if mirror.running and mirror.subs:
                            self._publish(pipe, _ctl_channel(mirror.owner), f"reading {mirror.id}")
                    await pipe.execute()
                if self.reserved:
                    await self._renew()
                self._ok()
            except Exception as exc:
                self._trouble("tick", exc)
            for mirror in list(self.mirrors.values()):
                if mirror.running and now - mirror.last_at >= idle and now - mirror.checked_at >= self.tick_s:
                    mirror.checked_at = now
                    try:
                        await self._check_silent(mirror, idle)
                    except Exception as exc:
                        # Nothing came for the idle timeout and Redis cannot say why: end this copy.
                        self._trouble("tick", exc)
                        mirror.cut("store_unavailable", _CUT_MSG)

    async def _renew(self) -> None:
        """Renew this replica's reservations (streams per key), one pipeline; EVALSHA by name, as the
        append does: redis-py's cluster pipeline refuses a registered script's `evalsha` method."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, key_id in self.reserved.items():
                pipe.execute_command("EVALSHA", _RESERVE_SHA, 1, _running_key(key_id), 0, sid, self.lease_ms)
            try:
                await pipe.execute()
            except NoScriptError:  # a node that never saw it (a failover, a restart): load, and next tick
                await self.redis.script_load(_RESERVE)

    async def _check_silent(self, mirror: Mirror, idle: float) -> None:
        """A followed stream went quiet for `idle`: its log is gone (Redis lost it), or its generator is."""
        if not await self.redis.exists(mirror.key):
            mirror.cut("store_lost", _LOST_MSG)
            return
        await self._end_remote(mirror.id, "generator_lost",
                               f"the replica generating this stream is gone and no output came for {idle:g} s",
                               True, owner=mirror.owner)

    def _ok(self) -> None:
        if self.down_since is not None:
            log.warning("redis reachable again after %.1f s", self.clock.now() - self.down_since)
            self.down_since = None

    def _trouble(self, what: str, exc: Exception) -> None:
        """A background loop failed: an outage, or a bug (logged, and the loop goes on)."""
        if isinstance(exc, _DOWN):
            self._failing(what, exc)
        else:
            log.error("redis store: %s failed", what, exc_info=exc)

    def _failing(self, what: str, exc: BaseException) -> None:
        """Redis failed: after `redis_outage_s` of this, end in-flight streams with an in-band error."""
        now = self.clock.now()
        if self.down_since is None:
            self.down_since = now
            log.warning("redis unreachable (%s): %s", what, exc)
        if now - self.down_since < self.settings.redis_outage_s:
            return
        for rec in self.owned.values():
            stream = rec.stream
            if stream.running:
                gen = stream.generation
                if gen is not None:
                    gen.cancel()
                # Written to Redis too once it is back, so every reader sees the same end.
                stream.fail("store_unavailable", _CUT_MSG, True)
        for mirror in list(self.mirrors.values()):
            mirror.cut("store_unavailable", _CUT_MSG)


def _meta_fields(rid: str, stream: Stream) -> dict[str, Any]:
    return {"owner": rid, "status": "running", "created": repr(stream.created), "model": stream.model,
            "key": stream.owner_key or ""}


def _end_fields(stream: Stream) -> dict[str, Any]:
    fields: dict[str, Any] = {"status": stream.status, "tokens": stream.tokens}
    if stream.finish_reason is not None:
        fields["finish_reason"] = stream.finish_reason
    if stream.error_code is not None:
        fields["error"] = stream.error_code
    return fields


class _Metrics:
    """Redis store figures, collected at scrape time."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def describe(self) -> list:
        return []

    def collect(self):
        s = self.store
        mirrors = list(s.mirrors.values())
        pool = 0
        if s.redis is not None:
            counts = getattr(getattr(s.redis, "connection_pool", None), "get_connection_count", None)
            pool = sum(n for n, _ in counts()) if counts is not None else 0
        yield GaugeMetricFamily("gateway_redis_up", "1 while Redis answers.", value=0 if s.down_since else 1)
        yield GaugeMetricFamily("gateway_redis_owned_streams", "Streams generated here, held in memory.",
                                value=len(s.owned))
        yield GaugeMetricFamily("gateway_redis_mirrors", "Streams generated elsewhere, followed here.",
                                value=len(mirrors))
        yield GaugeMetricFamily("gateway_redis_mirror_clients", "Clients reading mirrored streams.",
                                value=sum(len(m.subs) for m in mirrors))
        running = s._reader_task is not None and not s._reader_task.done()
        yield GaugeMetricFamily("gateway_redis_readers", "Blocking XREAD loops (one per process, one per shard "
                                "on a cluster).", value=len(s._readers) if running else 0)
        yield GaugeMetricFamily("gateway_redis_pool_connections", "Connections open in the command pool.",
                                value=pool)
        yield CounterMetricFamily("gateway_redis_reads", "XREAD calls of the reader.", value=s.reads)
        yield CounterMetricFamily("gateway_redis_events_read", "Events read from Redis.", value=s.events_read)
        yield CounterMetricFamily("gateway_redis_events_written", "Events written to Redis.",
                                  value=s.events_written)
        yield CounterMetricFamily("gateway_redis_flushes", "Write round trips (each carries every new event).",
                                  value=s.flushes)
