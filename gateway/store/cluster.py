"""The Redis store on a Redis Cluster (or Valkey cluster): the same streams, laid out per slot.

A cluster refuses a command whose keys lie in different slots (CROSSSLOT), and the plain store's two
batched commands span every stream: one append script for all new events, one blocking XREAD for all
mirrored streams. Here every stream belongs to one of `redis_shards` shards, a hash tag of its own:

    gw:{<tag>}:<id>:log    gw:{<tag>}:<id>:meta       (tag: shard crc32(id) % redis_shards)

The shard tags are chosen so that shard i's slot lies in the i-th equal share of the 16,384 slots:
with `redis_shards` equal to the number of primaries and the even layout `redis-cli --cluster create`
makes, each primary serves exactly one shard. So:

- appends: one script call per shard per flush (all its streams' new events), sent in one pipeline
  that the cluster client splits into one round trip per node;
- reading: one reader per shard, i.e. per node, each a blocking XREAD over all the mirrored streams
  of its shard, on a connection to the node serving that shard (found again after a failover, and
  after a resharding moved the slot: the reader follows the MOVED reply, `_resharded`);
- control: sharded pub/sub (SSUBSCRIBE/SPUBLISH), so a publish reaches the subscriber on whichever
  node serves the channel's slot and its count means what the plain store expects.

A failover (a primary killed, its replica promoted) looks like a short outage: writes and reads fail
and are retried until the cluster serves the slots again; events the old primary had not yet passed to
its replica are written again from the generator's log (it has every event). If the outage outlasts
`redis_outage_s`, streams end with the store's explicit `store_unavailable` error.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, MovedError, TryAgainError

from .base import StoreUnavailable
from .redis import _BLOCK_MS, RedisStore, _Owned, _Reader

if TYPE_CHECKING:
    from ..clock import Clock
    from ..metrics import Stats
    from ..settings import Settings
    from ..stream import Stream

__all__ = ["ClusterStore", "shard_tags"]

log = logging.getLogger("gateway.store")
_MIGRATING_RETRY_S = 0.05  # a reader whose slot is half-moved asks again after this


def shard_tags(n: int) -> list[str]:
    """Hash tags whose slots fall one in each of `n` equal shares of the slot range."""
    tags = []
    for i in range(n):
        lo, hi = i * REDIS_CLUSTER_HASH_SLOTS // n, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // n
        k = 0
        while not lo <= key_slot(f"gw{k}".encode()) < hi:
            k += 1
        tags.append(f"gw{k}")
    return tags


class ClusterStore(RedisStore):
    def __init__(self, settings: Settings, clock: Clock, stats: Stats) -> None:
        super().__init__(settings, clock, stats)
        self.tags = shard_tags(settings.redis_shards)
        self._moved: dict[int, tuple[str, int]] = {}  # shard -> the node a MOVED reply named (`_resharded`)

    def _shard(self, stream_id: str) -> int:  # (also picks the stream's reader)
        return zlib.crc32(stream_id.encode()) % len(self.tags)

    def _log_key(self, stream_id: str) -> str:
        return f"gw:{{{self.tags[self._shard(stream_id)]}}}:{stream_id}:log"

    def _meta_key(self, stream_id: str) -> str:
        return f"gw:{{{self.tags[self._shard(stream_id)]}}}:{stream_id}:meta"

    def _group(self, stream_id: str) -> Any:
        return self._shard(stream_id)

    def _client(self, name: str, size: int, socket_timeout: float | None) -> Any:
        return RedisCluster.from_url(
            self.settings.redis_url, max_connections=size, socket_timeout=socket_timeout,
            socket_connect_timeout=1.0, client_name=f"gw:{self.rid}:{name}",
        )

    def _node_client(self, key: str, name: str, socket_timeout: float | None,
                     address: tuple[str, int] | None = None) -> Redis:
        if address is None:
            node = self.redis.get_node_from_key(key)
            address = node.host, node.port
        host, port = address
        return Redis(host=host, port=port, socket_timeout=socket_timeout, socket_connect_timeout=1.0,
                     client_name=f"gw:{self.rid}:{name}")

    # -- control: sharded pub/sub ---------------------------------------------

    def _publish(self, client: Any, channel: str, message: str) -> Any:
        return client.spublish(channel, message)

    async def _pubsub(self, channel: str) -> Any:
        await self._locate(channel)
        return self._node_client(channel, "ctl", None).pubsub()

    async def _subscribe(self, pubsub: Any, channel: str) -> None:
        await pubsub.ssubscribe(channel)

    # -- failover: the promoted replica may lack the last events ------------

    def _lost(self, rec: _Owned, result: int) -> None:
        top = -2 - result
        if result <= -2 and top < rec.flushed - 1:
            # The log ends before what this replica wrote: acknowledged events that had not reached the
            # replica promoted in a failover. This replica holds them all: write them again.
            rec.flushed = top + 1
            self._touch(rec.stream)
            return
        super()._lost(rec, result)

    # -- reading: one reader per shard, the plain store's loop (RedisStore._read_shard) ------

    def _shards(self) -> int:
        return len(self.tags)

    def _reader_clients(self, shard: int) -> tuple[Redis, Redis]:
        tag = "{%s}" % self.tags[shard]
        address = self._moved.get(shard)  # where a MOVED reply sent this reader, else the cluster client's map
        return (self._node_client(tag, f"reader{shard}", _BLOCK_MS / 1000 + 3.0, address),
                self._node_client(tag, f"kick{shard}", 2.0, address))

    async def _reader_lost(self, reader: _Reader, exc: Exception) -> float | None:
        # The node went away (a failover) or moved the slot: connect afresh to whoever serves it.
        for client in (reader.client, reader.kick):
            if client is not None:
                try:
                    await client.aclose()
                except Exception:
                    pass
        reader.client = reader.kick = reader.id = None
        return self._resharded(reader.shard, exc)

    # -- resharding: a create while its slot moves -------------------------------

    async def add(self, stream: Stream) -> None:
        """The plain store writes a new stream's meta and first entry in one MULTI/EXEC. redis-py's cluster
        pipeline sends it to the node its map names and, for a slot moving, retries it there and at the ASK
        target (without ASKING, which the target refuses) for about 4 s, then raised MovedError or AskError
        out of the request: a 500. Now a MOVED (the map is right after it) is tried once more, and a slot
        still moving (ASK, TRYAGAIN) refused like an outage: 503 store_unavailable, retryable. A failed
        MULTI/EXEC wrote nothing."""
        for _ in range(2):
            try:
                return await super().add(stream)
            except MovedError:
                continue
            except (AskError, TryAgainError) as exc:  # (after MovedError: its base class)
                log.warning("create %s: its slot is moving (%s)", stream.id, exc)
                raise StoreUnavailable() from None
        raise StoreUnavailable()

    # -- resharding: a reader's or the control channel's slot moved to another primary ----------

    async def _locate(self, key: str) -> None:
        """Bring the cluster client's slot map up to date for `key`'s slot before connecting to its node
        directly. The subscriber to this replica's control channel is such a connection: when the channel's
        slot moves, the old node ends the subscription (SUNSUBSCRIBE) and the control loop subscribes again,
        but the map still named the old node (this replica's own commands never touch that slot), so it
        subscribed there again, refused (MOVED), for good: cancels through other replicas got 503 and their
        keep-alives were lost. A keyed command through the cluster client follows MOVED and updates the map."""
        try:
            await self.redis.exists(key)
        except Exception as exc:  # the subscription that follows fails too, and says why
            log.debug("locating %s: %s", key, exc)

    def _resharded(self, shard: int, exc: Exception) -> float | None:
        """After a failed read: how soon to read again if the shard's slot is moving or moved (not an outage),
        else None. The reader's connection is its own, to one node, so no cluster client follows redirects for
        it, and the cluster client's slot map learns of a move only from its own commands' MOVED replies (on a
        replica that only reads, none may come until the idle check: the reader sat on the old node for the
        idle timeout, 20 s in tests/test_cluster.py). So the reader follows MOVED itself: the node named there
        serves the slot now. While the slot is half-moved (ASK: our keys have left; TRYAGAIN: some have) it
        asks the old node again shortly; when the move ends it answers MOVED."""
        if isinstance(exc, MovedError):  # (a subclass of AskError: first)
            self._moved[shard] = (exc.host, int(exc.port))
            log.info("reader %d: slot %s moved to %s:%s", shard, exc.slot_id, exc.host, exc.port)
            return 0.01
        if isinstance(exc, (AskError, TryAgainError)):
            return _MIGRATING_RETRY_S
        self._moved.pop(shard, None)  # anything else (a node down, a failover): the cluster client's map again
        return None

    async def close(self) -> None:
        await super().close()
        for reader in self._readers:
            for client in (reader.client, reader.kick):
                if client is not None:
                    try:
                        await client.aclose()
                    except Exception:
                        pass
