"""Counters kept as plain integers on the hot path, exposed to Prometheus at scrape time."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .accept import accept_stats
from .names import STREAMED

__all__ = ["Stats", "TransportStats", "TRANSPORTS"]

TRANSPORTS = tuple(t.value for t in STREAMED)  # the `transport` label's values (gateway/names.py)


class TransportStats:
    __slots__ = ("connections", "events", "bytes", "disconnects", "resumes", "drops", "slow_cuts")

    def __init__(self) -> None:
        self.connections = 0  # open now
        self.events = 0
        self.bytes = 0
        self.disconnects = 0  # clients that left before the terminal event
        self.resumes = 0
        self.drops = 0  # connections cut by fault injection
        self.slow_cuts = 0  # connections cut because the client stopped reading (slow consumers)


class Stats:
    def __init__(self) -> None:
        self.transports = {name: TransportStats() for name in TRANSPORTS}
        self.active_streams = 0
        self.streams_created = 0
        self.errors: Counter[str] = Counter()  # in-band error events by code
        self.cancelled: Counter[str] = Counter()  # cancellations by reason
        self.finished = 0
        # Tokens generated after a stream's last reader left, when none came back (the detach policy's cost).
        self.wasted_tokens = 0
        self.refused: Counter[str] = Counter()  # requests refused by a limit or auth, by reason
        self.evicted = 0  # ended streams dropped before their TTL to bound memory (gateway/registry.py)
        self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "gateway_ttft_seconds", "Time from stream creation to its first token.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def __getitem__(self, transport: str) -> TransportStats:
        return self.transports[transport]

    def snapshot(self) -> dict:
        return {
            "active_streams": self.active_streams,
            "streams_created": self.streams_created,
            "finished": self.finished,
            "wasted_tokens": self.wasted_tokens,
            "errors": dict(self.errors),
            "cancelled": dict(self.cancelled),
            "refused": dict(self.refused),
            "transports": {
                name: {slot: getattr(t, slot) for slot in TransportStats.__slots__}
                for name, t in self.transports.items()
            },
        }


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        s = self.stats
        per = {
            "connections": GaugeMetricFamily("gateway_connections", "Open client connections.", labels=["transport"]),
            "events": CounterMetricFamily("gateway_events_sent", "Events written to clients.", labels=["transport"]),
            "bytes": CounterMetricFamily("gateway_bytes_sent", "Body bytes written to clients.", labels=["transport"]),
            "disconnects": CounterMetricFamily("gateway_disconnects", "Clients that left mid-stream.", labels=["transport"]),
            "resumes": CounterMetricFamily("gateway_resumes", "Attaches that resumed after a seq.", labels=["transport"]),
            "drops": CounterMetricFamily("gateway_drops", "Connections cut by fault injection.", labels=["transport"]),
            "slow_cuts": CounterMetricFamily("gateway_slow_cuts", "Connections cut for not reading.", labels=["transport"]),
        }
        for name, t in s.transports.items():
            for slot, family in per.items():
                family.add_metric([name], getattr(t, slot))
        yield from per.values()
        yield GaugeMetricFamily("gateway_active_streams", "Streams generating now.", value=s.active_streams)
        yield CounterMetricFamily("gateway_streams_created", "Streams created.", value=s.streams_created)
        yield CounterMetricFamily("gateway_streams_finished", "Streams ended with done.", value=s.finished)
        yield CounterMetricFamily("gateway_wasted_tokens", "Tokens generated after a stream's last reader "
                                  "left, when no reader came back before it ended.", value=s.wasted_tokens)
        errors = CounterMetricFamily("gateway_stream_errors", "Streams ended with an error event.", labels=["code"])
        for code, n in sorted(s.errors.items()):
            errors.add_metric([code], n)
        yield errors
        cancelled = CounterMetricFamily("gateway_streams_cancelled", "Generations cancelled.", labels=["reason"])
        for reason, n in sorted(s.cancelled.items()):
            cancelled.add_metric([reason], n)
        yield cancelled
        refused = CounterMetricFamily("gateway_refused", "Requests refused by auth or a limit.", labels=["reason"])
        for reason, n in sorted(s.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        accepts = accept_stats()
        if accepts is not None:  # uvicorn on gateway/accept.py's loop
            accepted, wakeups, screened = accepts
            yield CounterMetricFamily("gateway_connections_accepted", "Connections accepted (in bursts).",
                                      value=accepted)
            yield CounterMetricFamily("gateway_accept_wakeups", "Listening sockets found readable: accepted / "
                                      "wakeups is the mean burst.", value=wakeups)
            yield CounterMetricFamily("gateway_accept_refused", "Connections refused as they were accepted "
                                      "(past capacity; also in gateway_refused).", value=screened)
        yield CounterMetricFamily("gateway_streams_evicted", "Ended streams dropped before their TTL (memory bound).",
                                  value=s.evicted)
