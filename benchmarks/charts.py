"""The benchmarks' charts (matplotlib, imported only when a chart is asked for)."""

from __future__ import annotations

from pathlib import Path


def horizontal_bars(path: Path, bars: dict[str, tuple[float, str]], xlabel: str, title: str) -> None:
    """One bar per name, top to bottom in the dict's order: (its value, the label written after it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(bars)[::-1]
    values = [bars[name][0] for name in names]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.4))
    drawn = ax.barh(names, values, color="#4c72b0")
    for bar, name in zip(drawn, names, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bars[name][1]}", va="center")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(values) * 1.2)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
