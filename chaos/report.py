"""The run's report: summary.txt (verdict first) and timeline.png."""
from __future__ import annotations

import os

from .history import OK, Op


def timeline(ops: list[Op], path: str, title: str) -> None:
    """Acknowledged publishes per second and publish latency over time, with each
    fault's window shaded and labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pubs = [o for o in ops if o.kind == "publish" and o.complete is not None]
    faults = [o for o in ops if o.kind == "fault"]
    # The publish phase and its faults; the drain that follows would only stretch the axis.
    end = max([o.complete or o.invoke for o in pubs + faults] + [1.0])
    seconds = int(end) + 1
    rate = [0] * seconds
    lat: list[list[float]] = [[] for _ in range(seconds)]
    for o in pubs:
        s = min(int(o.complete), seconds - 1)
        if o.outcome == OK:
            rate[s] += 1
            lat[s].append((o.complete - o.invoke) * 1000)
    p50 = [sorted(v)[len(v) // 2] if v else None for v in lat]
    p99 = [sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] if v else None for v in lat]
    fails = [0] * seconds
    for o in pubs:
        if o.outcome != OK:
            fails[min(int(o.complete), seconds - 1)] += 1

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 7), sharex=True)
    xs = list(range(seconds))
    ax1.plot(xs, rate, color="tab:blue", label="acknowledged publishes/s")
    ax1.plot(xs, fails, color="tab:red", label="failed or unknown publishes/s", linewidth=0.8)
    ax1.set_ylabel("publishes / s")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(xs, [v if v is not None else float("nan") for v in p50], color="tab:green", label="p50")
    ax2.plot(xs, [v if v is not None else float("nan") for v in p99], color="tab:orange", label="p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("publish latency (ms)")
    ax2.set_xlabel("seconds since start")
    ax2.legend(loc="upper right", fontsize=8)
    colors = ["#f4cccc", "#d9ead3", "#cfe2f3", "#fff2cc", "#d9d2e9", "#fce5cd"]
    names = sorted({f.value for f in faults})
    for f in faults:
        c = colors[names.index(f.value) % len(colors)]
        for ax in (ax1, ax2):
            ax.axvspan(f.invoke, f.complete or end, color=c, alpha=0.6, linewidth=0)
        ax1.text(f.invoke, ax1.get_ylim()[1] * 0.95, f.value, fontsize=7, rotation=90, va="top")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_summary(out_dir: str, verdict_text: str, header: list[str]) -> str:
    path = os.path.join(out_dir, "summary.txt")
    lines = verdict_text.rstrip("\n").split("\n")
    with open(path, "w") as f:
        # The verdict comes first, then what was run.
        f.write(lines[0] + "\n")
        f.write("\n".join(header) + "\n\n")
        f.write("\n".join(lines[1:]) + "\n")
    return path
