"""Attainment against request rate, one line per strategy, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .study import StrategyResult


def plot_attainment(results: Sequence[StrategyResult], target: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
