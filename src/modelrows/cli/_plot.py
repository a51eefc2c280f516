"""Learning curves with matplotlib (imported only when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw_curves(
    series: Mapping[str, tuple[list[Any], list[Any]]],
    best: tuple[Any, Any, str],
    *,
    x: str,
    y: str,
    by: str | None,
    minimize: bool,
    title: str,
) -> Figure:
    """A figure with one line per series and the best point starred and labelled."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    colors: dict[str, Any] = {}
    for label, (xs, ys) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
        colors[label] = line.get_color()
    if all(isinstance(v, int) for xs, _ in series.values() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bx, bvalue, blabel = best
    ax.plot(
        [bx],
        [bvalue],
        marker="*",
        markersize=16,
        color=colors.get(blabel, "black"),
        markeredgecolor="black",
        linestyle="none",
        zorder=5,
        label="_best",
    )
    ax.get_xlim()  # settle the limits, so the label can stay inside the axes
    px, _ = ax.transAxes.inverted().transform(
        ax.transData.transform((ax.convert_xunits(bx), bvalue))  # type: ignore[no-untyped-call]
    )
    ha = "right" if px > 0.67 else "left" if px < 0.33 else "center"
    where = f"{by} {blabel}, " if by else ""
    ax.annotate(
        f"best: {where}{x} {short(bx)}, {y} {short(bvalue)}",
        xy=(bx, bvalue),
        xytext=({"right": 6, "left": -6, "center": 0}[ha], 14 if minimize else -14),
        textcoords="offset points",
        ha=ha,
        va="bottom" if minimize else "top",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.9},
        zorder=6,
    )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if by and 1 < len(series) <= 12:
        ax.legend(title=by, fontsize=8, loc="best")
    return fig


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
