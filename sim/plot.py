"""Attainment against request rate, one line per strategy, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .dynamic import RampReport
from .study import StrategyResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attainment(results: Sequence[StrategyResult], target: float, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        points = sorted((e.rate, e.attainment) for e in r.evaluations)
        label = f"{r.name} (goodput {r.goodput:.2f} req/s)"
        ax.plot([p[0] for p in points], [p[1] * 100 for p in points], marker="o", label=label)
    ax.axhline(target * 100, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ramp(runs: Sequence[tuple[str, RampReport]], target: float, title: str, path: Path) -> None:
    """Attainment per window (solid) and the instances serving (dashed) against time, one colour per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    right = ax.twinx()
    for k, (name, report) in enumerate(runs):
        color = f"C{k}"
        starts = [w.start for w in report.windows]
        attainment = [(w.attainment or 0) * 100 for w in report.windows]
        ax.plot(starts, attainment, marker="o", markersize=3, color=color, label=f"{name}: SLO attainment")
        instances = [w.instances for w in report.windows]
        right.step(starts, instances, where="post", color=color, linestyle="--", label=f"{name}: instances")
        for e in report.events:
            if e.decision.action.value in ("split", "merge"):
                ax.axvline(e.time, color=color, alpha=0.3, linewidth=1)
    first = runs[0][1].windows
    right.step([w.start for w in first], [w.offered_rate for w in first], where="post", color="grey", label="req/s")
    ax.axhline(target * 100, color="grey", linestyle=":", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    right.set_ylabel("instances / offered req/s")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
