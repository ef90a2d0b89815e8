"""The report's figures: matplotlib (Agg), returned as inline SVG text, so the HTML needs no network."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from gateway.names import COLORS as NAMED_COLORS  # noqa: E402

__all__ = ["COLORS", "latency_cdf", "concurrency", "baseline", "cost", "reconnect"]

COLORS = {t.value: c for t, c in NAMED_COLORS.items()}
_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9.5, "axes.titlesize": 10.5, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.spines.top": False, "axes.spines.right": False,
    "axes.edgecolor": "#9ca3af", "axes.labelcolor": "#374151", "xtick.color": "#4b5563",
    "ytick.color": "#4b5563", "axes.grid": True, "grid.color": "#e5e7eb", "grid.linewidth": 0.8,
    "legend.frameon": False, "axes.axisbelow": True, "svg.fonttype": "none", "figure.dpi": 100,
}


def _color(t: str) -> str:
    return COLORS.get(t.partition("@")[0], "#111827")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", transparent=True)
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _cdf(histogram: dict[str, int]) -> tuple[list[float], list[float]]:
    items = sorted((float(k), v) for k, v in histogram.items())
    total = sum(v for _, v in items) or 1
    xs, ys, seen = [], [], 0
    for x, n in items:
        xs.append(x)
        seen += n
        ys.append(seen / total)
    return xs, ys


def latency_cdf(series: dict[str, dict[str, dict]], itl_ms: float, ttft_ms: float) -> str:
    """series: {label: {"ttft": histogram, "inter_token": histogram}}: one line per transport."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, metric, title, sent in ((axes[0], "ttft", "Time to first token", ttft_ms),
                                        (axes[1], "inter_token", "Gap between tokens", itl_ms)):
            for label, hists in series.items():
                hist = hists.get(metric)
                if hist:
                    xs, ys = _cdf(hist)
                    ax.step(xs, ys, where="post", color=_color(label), lw=1.8, label=label)
            ax.axvline(sent, color="#9ca3af", ls="--", lw=1)
            ax.text(sent, 0.02, " model", color="#6b7280", fontsize=8, va="bottom")
            for q in (0.5, 0.95, 0.99):
                ax.axhline(q, color="#d1d5db", lw=0.8, zorder=0)
            ax.set_title(title)
            ax.set_xlabel("ms")
            ax.set_ylim(0, 1.02)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes[0].set_ylabel("share of samples at or below")
        axes[1].legend(loc="lower right")
        fig.tight_layout()
        return _svg(fig)


def concurrency(rows: list[dict], itl_ms: float, ttft_ms: float, itl_limit: float, ttft_limit: float) -> str:
    """rows: {label, users, tokens_per_s, ttft_p95, itl_p99, slipped}."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
        labels = sorted({r["label"] for r in rows})
        for label in labels:
            mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["users"])
            x = [r["users"] for r in mine]
            for ax, key in zip(axes, ("tokens_per_s", "ttft_p95", "itl_p99")):
                y = [r[key] for r in mine]
                ax.plot(x, y, "-o", color=_color(label), lw=1.8, ms=4, label=label)
                slipped = [(xi, yi) for xi, yi, r in zip(x, y, mine) if r["slipped"] and yi is not None]
                if slipped:
                    ax.scatter(*zip(*slipped), s=70, facecolors="none", edgecolors="#dc2626", lw=1.5, zorder=5)
        axes[0].set_title("Tokens delivered per second")
        axes[1].set_title("TTFT p95 (ms)")
        axes[2].set_title("Inter-token p99 (ms)")
        axes[1].axhline(ttft_limit, color="#dc2626", ls="--", lw=1)
        axes[1].axhline(ttft_ms, color="#9ca3af", ls=":", lw=1)
        axes[2].axhline(itl_limit, color="#dc2626", ls="--", lw=1)
        axes[2].axhline(itl_ms, color="#9ca3af", ls=":", lw=1)
        for ax in axes:
            ax.set_xlabel("concurrent streams")
            xs = sorted({r["users"] for r in rows})
            if len(xs) > 2 and xs[-1] / xs[0] >= 8:
                ax.set_xscale("log")
            ax.set_xticks(xs)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylim(bottom=0)
        axes[0].legend(loc="upper left")
        fig.tight_layout()
        return _svg(fig)


def baseline(rows: list[dict], noticeable_ms: float) -> str:
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        x = [r["tokens"] for r in rows]
        ax.plot(x, [r["complete_ms"] for r in rows], "-o", color=COLORS["complete"], lw=2, ms=4,
                label="not streamed: whole answer")
        ax.plot(x, [r["stream_first_words_ms"] for r in rows], "-o", color=COLORS["sse_post"], lw=2, ms=4,
                label="streamed: first words")
        ax.plot(x, [r["stream_whole_ms"] for r in rows], "--", color=COLORS["sse_post"], lw=1.2,
                label="streamed: whole answer")
        ax.fill_between(x, [r["stream_first_words_ms"] for r in rows],
                        [r["stream_first_words_ms"] + noticeable_ms for r in rows],
                        color="#fde68a", alpha=0.5, lw=0, label=f"within {noticeable_ms:g} ms of first words")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("answer length (tokens)")
        ax.set_ylabel("ms until the user sees it")
        ax.set_title("What the user waits for")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8.5)
        fig.tight_layout()
        return _svg(fig)


def cost(transports: list[str], cpu: dict, memory: dict, wire: dict, payload: dict) -> str:
    """Three bar charts side by side: gateway CPU per token, memory per connection, wire bytes per token."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(11, 2.9))
        panels = ((axes[0], cpu, "Gateway CPU per token (µs)", "{:.0f}"),
                  (axes[1], {t: v / 1024 for t, v in memory.items() if v is not None},
                   "Memory per open connection (KiB)", "{:.1f}"),
                  (axes[2], wire, "Wire bytes per token", "{:.0f}"))
        for ax, values, title, fmt in panels:
            names = [t for t in transports if values.get(t) is not None]
            vals = [values[t] for t in names]
            if not names:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", color="#6b7280", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            bars = ax.bar(names, vals, color=[_color(t) for t in names], width=0.6)
            for b, v in zip(bars, vals):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), fmt.format(v), ha="center",
                        va="bottom", fontsize=8.5, color="#111827")
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
            ax.margins(y=0.18)
        names = [t for t in transports if payload.get(t) is not None and wire.get(t) is not None]
        if names:
            axes[2].bar(names, [payload[t] for t in names], color="#111827", alpha=0.25, width=0.6,
                        label="token text itself")
            axes[2].legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        return _svg(fig)


def reconnect(rows: dict[str, dict]) -> str:
    """rows: {transport: {"p50", "p95", "p99"}}: time from a dropped connection to the next event."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 2.9))
        names = [t for t in rows if rows[t].get("p50") is not None]
        width = 0.25
        for i, (q, alpha) in enumerate((("p50", 1.0), ("p95", 0.65), ("p99", 0.35))):
            xs = [j + (i - 1) * width for j in range(len(names))]
            ax.bar(xs, [rows[t][q] for t in names], width=width, color=[_color(t) for t in names], alpha=alpha)

        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("ms")
        ax.set_title("Drop to next event (resume)")
        ax.grid(axis="x", visible=False)
        swatches = [Patch(color="#4b5563", alpha=a, label=q) for q, a in (("p50", 1.0), ("p95", 0.65), ("p99", 0.35))]
        ax.legend(handles=swatches, loc="upper right", ncols=3, fontsize=8)
        fig.tight_layout()
        return _svg(fig)
