"""PNG line plots for the benchmarks' docs (matplotlib, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hebbret._io import atomic_path

Series = dict[str, tuple[Sequence[float], Sequence[float]]]  # line label -> (xs, ys)


def curves_png(panels: Sequence[tuple[str, str, Series]], path: str | os.PathLike,
               xlabel: str, columns: int = 2, logx: bool = True) -> None:
    """One panel per ``(title, ylabel, series)``, ``columns`` panels a row, a legend in each;
    written to ``path`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), dpi=100,
                             squeeze=False)
    for ax, (title, ylabel, series) in zip(axes.flat, panels, strict=False):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
