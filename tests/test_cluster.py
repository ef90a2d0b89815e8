"""The Redis store on a real Redis Cluster (3 primaries, 1 replica each): appends per slot, one reader per
node, and a primary killed mid-stream (its replica promoted) with nothing silently lost."""

from __future__ import annotations

import threading

import httpx
import pytest

from gateway.sources.simulated import expected_text
from gateway.store.cluster import shard_tags

from . import wire
from .cluster import RedisCluster
from .support import Gateway, run

SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}
ENV = {
    "GATEWAY_STREAM_STORE": "redis-cluster",
    "GATEWAY_REDIS_SHARDS": "3",
    "GATEWAY_WORKERS": "1",
    "GATEWAY_HEARTBEAT_S": "0.3",
    "GATEWAY_REDIS_OUTAGE_S": "15",
    "GATEWAY_IDLE_TIMEOUT_S": "20",
}


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster(masters=3, replicas=1)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def pair(cluster):
    gws = [Gateway({**ENV, "GATEWAY_REDIS_URL": cluster.url}) for _ in range(2)]
    yield gws
    for gw in gws:
        gw.stop()


def create(url: str, prompt: str, **fields) -> str:
    r = httpx.post(f"{url}/v1/streams", json={"prompt": prompt, "sim": SIM, **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_shard_tags_fall_one_per_primary(cluster):
    tags = shard_tags(3)
    assert len({cluster.primary_of("{%s}" % t) for t in tags}) == 3


def test_streams_spread_over_every_primary_and_resume_across_replicas(cluster, pair):
    a, b = pair
    ids = [create(a.url, f"spread {i}", max_tokens=150, seed=i) for i in range(9)]

    async def go():
        import asyncio

        return await asyncio.gather(*(wire.read(b.url, "ndjson", stream_id=sid) for sid in ids))

    reads = run(go())
    for i, r in enumerate(reads):
        wire.assert_exact(r.events, 0, 151)
        assert r.text == expected_text(f"spread {i}", i, 150)
    # Every primary holds streams, and B follows them with one blocking XREAD per node at most.
    tags = shard_tags(3)
    primaries = {cluster.primary_of("{%s}" % t) for t in tags}
    assert all(int(cluster.call(p, "DBSIZE")) > 0 for p in primaries)
    # B's readers: at most one connection per primary (one per shard it followed), not one per stream.
    readers = {p: [line for line in cluster.call(p, "CLIENT", "LIST").splitlines()
                   if f"-{b.pid}-" in line and ":reader" in line] for p in primaries}
    assert all(len(lines) <= 1 for lines in readers.values()) and any(readers.values()), readers
    samples = b.metrics()
    assert samples["gateway_redis_events_read_total"] >= 9 * 152


def test_killing_a_primary_mid_stream_loses_nothing_silently(cluster, pair):
    a, b = pair
    text = expected_text("failover", 3, 300)
    sid = create(a.url, "failover", max_tokens=300, seed=3)
    import zlib  # the primary serving this stream's shard

    tag = shard_tags(3)[zlib.crc32(sid.encode()) % 3]
    victim = cluster.primary_of("{%s}" % tag)
    killed = threading.Event()

    def kill(event: dict) -> None:
        if event.get("seq") == 40 and not killed.is_set():
            killed.set()
            cluster.kill(victim)

    reads = run(wire.follow([b.url, a.url], "ndjson", sid, on_event=kill, timeout=90), 120)
    assert killed.is_set()
    events = wire.joined(reads)
    wire.assert_exact(events, 0)
    end = reads[-1].terminal
    assert end is not None, "the stream ended without a terminal event"
    got = wire.text_of(events)
    if end["type"] == "done":
        assert got == text  # the whole answer, through the failover
    else:  # an explicit, retryable error, and the partial text is a true prefix
        assert end["code"] in ("store_unavailable", "store_lost", "generator_lost") and end["retryable"]
        assert text.startswith(got)
    print(f"\nfailover: primary {victim} killed at seq 40; client saw {end['type']} "
          f"{end.get('code', '')} after {len(reads)} connection(s), {len(got)} of {len(text)} chars")
    cluster.wait_ok()
