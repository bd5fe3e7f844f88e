"""The benchmark as a picture: decode speed and peak memory per configuration."""

from __future__ import annotations

from pathlib import Path

from app.bench.runner import ConfigResult

SIZE_IN = (10.0, 5.0)
DPI = 100
SIZE_PX = (int(SIZE_IN[0] * DPI), int(SIZE_IN[1] * DPI))
COLOURS = {"llamacpp": "#2f7ed8", "pytorch": "#e4572e"}


def write_chart(results: list[ConfigResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    names = [r.config.name for r in ok]
    colours = [COLOURS.get(r.config.backend, "grey") for r in ok]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=SIZE_IN, dpi=DPI, sharey=True)
    for ax, values, label in (
        (speed, [r.figure("decode_tokens_per_s") or 0 for r in ok], "decode tokens/s (higher is better)"),
        (memory, [r.peak_rss_mb or 0 for r in ok], "peak memory, MiB (lower is better)"),
    ):
        bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
        ax.set_xlabel(label)
        ax.margins(x=0.2)
        ax.grid(axis="x", alpha=0.3)
    speed.invert_yaxis()  # first configuration on top, as in the table
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)  # no bbox_inches: the image keeps SIZE_PX
    plt.close(fig)
