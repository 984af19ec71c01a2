"""Plot pass@k and majority@k curves, with fitted coverage laws extrapolated.

    plot_curves("coverage.png", ks, {"pass@k": cov, "majority@k": maj},
                fits={"pass@k": fit}, extrapolate_to=1024)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from thinkscale.analysis.scaling import CoverageFit


def plot_curves(
    path: str | Path,
    ks: Sequence[int],
    curves: dict[str, list[float]],
    fits: dict[str, CoverageFit] | None = None,
    extrapolate_to: int | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of coverage against k (log2 axis).

    Args:
        path: Where to write the PNG; parent folders are created.
        ks: Budgets, the x values shared by every curve.
        curves: Name -> fraction solved at each k. Names containing "majority"
            are dashed, the rest (pass@k) solid.
        fits: Name -> fitted law, drawn dotted; a fit whose name matches a
            curve takes that curve's colour.
        extrapolate_to: Draw fits out to this k; by default to max(ks).
        title: Figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        colours: dict[str, str] = {}
        for name, ys in curves.items():
            style = "--" if "majority" in name else "-"
            (line,) = ax.plot(ks, ys, style, marker="o", markersize=3, label=name)
            colours[name] = line.get_color()
        k_end = max(extrapolate_to or 0, max(ks))
        grid = np.geomspace(min(ks), k_end, 200)
        for name, fit in (fits or {}).items():
            ax.plot(
                grid,
                fit.predict(grid),
                ":",
                linewidth=1,
                color=colours.get(name),
                label=f"{name} fit: exp({fit.a:.2f} k^{fit.b:.2f})",
            )
        ax.set_xscale("log", base=2)
        _finish(fig, ax, out, "k (samples)", title)
    finally:
        plt.close(fig)  # figures pile up in long sweeps otherwise
    return out


def _finish(fig, ax, out: Path, xlabel: str, title: str) -> None:
    """Fractions solved (0 to 1) against `xlabel`, with a grid and legend, written to `out`."""
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of problems solved")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_rounds(path: str | Path, rounds: Sequence[int], curves: dict[str, list[float | None]], title: str = "") -> Path:
    """Write a PNG of metrics (fractions solved) against training round; None values are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, ys in curves.items():
            points = [(r, y) for r, y in zip(rounds, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), "--" if "majority" in name else "-", marker="o", markersize=4, label=name)
        ax.set_xticks(list(rounds))
        _finish(fig, ax, out, "round (0: the starting policy)", title)
    finally:
        plt.close(fig)
    return out
