"""The results chart: python bench/chart.py RESULTS.json OUT.png (bench venv).

Four panels: tiny jobs/s (single and batch submit; Tandem's Python op as
user-tiny beside Celery's tiny, the same task), thumbnails images/s (and
the Pillow op, user-thumbnails),
compress MB/s, and latency percentiles at equal offered load. Bars are
medians with min–max whiskers; dashed lines are the limits (raw JetStream
publish+consume, in-process native).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLOURS = {
    "tandem/always": "#1f6fb4",
    "tandem/interval": "#7fb2e0",
    "celery-reliable/aof-always": "#c0392b",
    "celery-reliable/default": "#f1948a",
    "celery-fast/aof-always": "#7d3c98",
    "celery-fast/default": "#c39bd3",
    # The second peer (issue 15)
    "taskiq/sync-always": "#1e8449",
    "taskiq/default": "#82e0aa",
}
ORDER = list(COLOURS)


def find(
    ms: list[dict[str, Any]], system: str, workload: str, metric: str = "throughput", load: str = ""
) -> dict[str, Any] | None:
    for m in ms:
        if (m["system"], m["workload"], m["metric"], m.get("load", "")) == (
            system,
            workload,
            metric,
            load,
        ):
            return m
    return None


def bars(
    ax: Any,
    ms: list[dict[str, Any]],
    groups: list[str],
    title: str,
    unit: str,
    limits: list[tuple[str, str, str]],
    log: bool = False,
) -> None:
    # Groups nobody ran (e.g. the user-* ones in a run without them) are left out.
    groups = [g for g in groups if any(find(ms, s, g) for s in ORDER)]
    systems = [s for s in ORDER if any(find(ms, s, g) for g in groups)]
    if not systems:
        ax.set_title(title + " (no data)")
        ax.axis("off")
        return
    width = 0.8 / len(systems)
    labelled: set[str] = set()
    for gi, g in enumerate(groups):
        for si, s in enumerate(systems):
            m = find(ms, s, g)
            if m is None:
                continue
            x = gi + (si - (len(systems) - 1) / 2) * width
            ax.bar(
                x,
                m["median"],
                width,
                color=COLOURS[s],
                label=None if s in labelled else s,
                yerr=[[m["median"] - m["min"]], [m["max"] - m["median"]]],
                capsize=2,
            )
            labelled.add(s)
    for lsys, lwl, label in limits:
        m = find(ms, lsys, lwl)
        if m is not None:
            ax.axhline(m["median"], linestyle="--", linewidth=1, color="#555555")
            ax.text(
                0.01,
                m["median"],
                f"{label}: {m['median']:,.0f}",
                transform=ax.get_yaxis_transform(),
                fontsize=7,
                ha="left",
                va="bottom",
                color="#333333",
            )
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the limit labels
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(unit + (" (log)" if log else ""))
    ax.set_title(title)
    # One legend for the systems, above the panels (see main).


def latency(ax: Any, ms: list[dict[str, Any]]) -> None:
    # Equal offered load: Celery at its own 25%/50% vs Tandem at Celery's rate.
    pairs = []
    for d, celery in (
        ("always", "celery-reliable/aof-always"),
        ("interval", "celery-reliable/default"),
    ):
        for p in ("25%", "50%"):
            pairs.append((f"{d} {p}", celery, p, f"tandem/{d}", f"celery {p}"))
    labels: list[str] = []
    series: dict[str, list[float]] = {}
    for label, csys, cload, tsys, tload in pairs:
        c = [find(ms, csys, "latency", q, cload) for q in ("p50", "p99", "p999")]
        t = [find(ms, tsys, "latency", q, tload) for q in ("p50", "p99", "p999")]
        # Tandem's Python op (user-latency) at the same rate as Celery's sha256 task.
        u = [find(ms, tsys, "user-latency", q, tload) for q in ("p50", "p99", "p999")]
        if all(x is None for x in c + t + u):
            continue
        labels.append(label)
        for name, vals in (("Celery", c), ("Tandem", t), ("Tandem Python op", u)):
            for q, m in zip(("p50", "p99", "p999"), vals):
                series.setdefault(f"{name} {q}", []).append(m["median"] if m else float("nan"))
    if not labels:
        ax.set_title("latency (no data)")
        ax.axis("off")
        return
    keys = [
        k
        for k in (
            "Celery p50",
            "Celery p99",
            "Celery p999",
            "Tandem p50",
            "Tandem p99",
            "Tandem p999",
            "Tandem Python op p50",
            "Tandem Python op p99",
            "Tandem Python op p999",
        )
        if k in series
    ]
    width = 0.8 / len(keys)
    shades = {
        "Celery p50": "#f5b7b1",
        "Celery p99": "#e74c3c",
        "Celery p999": "#922b21",
        "Tandem p50": "#aed6f1",
        "Tandem p99": "#3498db",
        "Tandem p999": "#1b4f72",
        "Tandem Python op p50": "#a9dfbf",
        "Tandem Python op p99": "#27ae60",
        "Tandem Python op p999": "#145a32",
    }
    for ki, k in enumerate(keys):
        xs = [i + (ki - (len(keys) - 1) / 2) * width for i in range(len(labels))]
        heights = series[k]
        if all(v != v for v in heights):  # all NaN: this system did not run
            continue
        ax.bar(xs, heights, width, label=k, color=shades[k])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    )
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("ms, submit → result (log)")
    ax.set_title("latency at Celery's offered load (durability, % of Celery max)")
    ax.legend(fontsize=7, ncol=2)


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        doc = json.load(f)
    ms = doc["measurements"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    bars(
        axes[0][0],
        ms,
        ["tiny/single", "tiny/batch", "user-tiny/single", "user-tiny/batch"],
        "tiny: sha256 of 1 KiB, submit → all results (user-*: Tandem's Python op)",
        "jobs/s",
        [
            ("jetstream/always", "jetstream/pubsub", "raw JetStream pub+consume, sync always"),
            ("jetstream/interval", "jetstream/pubsub", "raw JetStream pub+consume, interval"),
        ],
        log=True,
    )
    bars(
        axes[0][1],
        ms,
        ["thumbnails", "user-thumbnails"],
        "thumbnails: 1920×1080 JPEG → 256 px PNG (user-*: Tandem's Pillow op)",
        "images/s",
        [("native", "thumbnails", "native in-process")],
    )
    bars(
        axes[1][0],
        ms,
        ["compress"],
        "compress: 1 MiB text → zstd -3",
        "MB/s",
        [("native", "compress", "native in-process")],
    )
    latency(axes[1][1], ms)
    m = doc.get("machine", {})
    fig.suptitle(
        f"Tandem vs Celery+Redis and taskiq+NATS ({doc.get('mode')} run, {doc.get('started', '')}; "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores); median of {doc['settings']['repeats']}, whiskers min–max",
        fontsize=9,
    )
    handles, labels = [], []
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        order = sorted(
            range(len(labels)), key=lambda i: ORDER.index(labels[i]) if labels[i] in ORDER else 99
        )
        fig.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="upper center",
            ncol=6,
            fontsize=8,
            bbox_to_anchor=(0.5, 0.965),
            frameon=False,
        )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
