"""Learning curves: the lines of each run (continued across resumes) and the figure.

``lines`` turns query rows into the segments to draw; it is plain Python. ``draw`` makes the
matplotlib figure (matplotlib is imported only there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PARENT = "parent_row_id"
"""The column that names the row a resumed run continued from (when a catalog has it)."""

_LOWER_IS_BETTER = re.compile(
    r"(loss|err|error|perplexity|ppl|mse|mae|rmse|nll|wer|cer|regret|latency|distance)",
    re.IGNORECASE,
)


def lower_is_better(column: str) -> bool:
    """Whether a metric named ``column`` is best when lowest (a loss, an error ...)."""
    return bool(_LOWER_IS_BETTER.search(column))


@dataclass
class Point:
    row_id: str
    group: str
    x: Any
    y: float


@dataclass
class Segment:
    """Points of one group drawn as one line; ``origin`` is the point of the row it resumed
    from (another group's, or an earlier branch of its own), joined to it by a dashed line."""

    group: str
    origin: Point | None = None
    points: list[Point] = field(default_factory=list)


def lines(rows: Sequence[Mapping[str, Any]]) -> list[Segment]:
    """The segments to draw, from rows with ``row_id``, ``g``, ``x``, ``y`` and ``parent``.

    Rows are taken in the order written (row ids sort by time). Within a group, a row continues
    the latest segment, unless it records a parent row: then it continues the segment that its
    parent ends or started from, or begins a new one at its parent (a resumed run). Without a
    parent column every group is one line, sorted by x.
    """
    by_id = {r["row_id"]: r for r in rows}
    segments: list[Segment] = []
    latest: dict[str, Segment] = {}
    for r in sorted(rows, key=lambda r: r["row_id"]):
        point = Point(r["row_id"], r["g"], r["x"], r["y"])
        parent = by_id.get(r.get("parent") or "")
        target = latest.get(point.group)
        if parent is not None:
            pid = parent["row_id"]
            target = next(
                (
                    s
                    for s in reversed(segments)
                    if s.group == point.group
                    and (
                        (s.points and s.points[-1].row_id == pid)
                        or (s.origin is not None and s.origin.row_id == pid)
                    )
                ),
                None,
            )
            if target is None:
                origin = Point(parent["row_id"], parent["g"], parent["x"], parent["y"])
                target = Segment(point.group, origin=origin)
                segments.append(target)
        elif target is None:
            target = Segment(point.group)
            segments.append(target)
        target.points.append(point)
        latest[point.group] = target
    for s in segments:
        s.points.sort(key=lambda p: (p.x, p.row_id))
    return segments


def best_points(
    segments: Sequence[Segment], *, minimize: bool
) -> tuple[dict[str, Point], Point | None]:
    """The best point of each group and the best of all (NaN never ranks; ties go to the
    earliest row)."""

    def better(p: Point, held: Point | None) -> bool:
        if held is None or p.y != held.y:
            return held is None or (p.y < held.y if minimize else p.y > held.y)
        return p.row_id < held.row_id

    best: dict[str, Point] = {}
    overall: Point | None = None
    for s in segments:
        for p in s.points:
            if isinstance(p.y, float) and math.isnan(p.y):
                continue
            if better(p, best.get(p.group)):
                best[p.group] = p
    for p in best.values():
        if better(p, overall):
            overall = p
    return best, overall


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(sep=" ", timespec="seconds"))
    return str(value)


@dataclass
class Panel:
    """One y column: its segments, direction and best points."""

    y: str
    segments: list[Segment]
    minimize: bool
    best: dict[str, Point]
    overall: Point


def draw(
    panels: Sequence[Panel],
    groups: Sequence[str],
    *,
    x: str,
    by: str | None,
    log_y: bool,
    title: str,
) -> Figure:
    """One panel per y column, stacked and sharing x; a color per group, the same in every
    panel. Each group's best point is marked with a diamond (and its value given in the legend,
    best first), the best of all with a star."""
    from matplotlib.figure import Figure

    colors = _colors(groups)
    fig = Figure(figsize=(8, 2.2 + 2.8 * len(panels)), dpi=150, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel, colors, x=x, by=by, log_y=log_y)
    axes[-1].set_xlabel(x)
    fig.suptitle(title)
    return fig


def _colors(groups: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    if len(groups) <= 10:
        cmap = colormaps["tab10"]
        return {g: cmap(i) for i, g in enumerate(groups)}
    cmap = colormaps["viridis"]
    return {g: cmap(i / max(1, len(groups) - 1)) for i, g in enumerate(groups)}


def _legend(ax: Axes, panel: Panel, colors: Mapping[str, Any], *, x: str, by: str) -> None:
    """A legend entry per group, best first: ``run  (best 0.9822 at epoch 15)``."""
    from matplotlib.lines import Line2D

    ranked = sorted(panel.best.values(), key=lambda p: (p.y if panel.minimize else -p.y, p.row_id))
    word = "lowest" if panel.minimize else "highest"
    handles = [
        Line2D(
            [],
            [],
            color=colors[p.group],
            marker="o",
            markersize=3,
            linewidth=1.5,
            label=f"{p.group}  ({word} {short(p.y)} at {x} {short(p.x)})",
        )
        for p in ranked
    ]
    ax.legend(handles=handles, title=by, fontsize=7, title_fontsize=8, loc="best")


def _draw_panel(
    ax: Axes, panel: Panel, colors: Mapping[str, Any], *, x: str, by: str | None, log_y: bool
) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for s in panel.segments:
        color = colors[s.group]
        xs, ys = [p.x for p in s.points], [p.y for p in s.points]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=color)
        if s.origin is not None and s.points:  # where a resumed run picked up
            first = s.points[0]
            ax.plot(
                [s.origin.x, first.x],
                [s.origin.y, first.y],
                linestyle="--",
                linewidth=1.2,
                color=color,
            )
    for group, p in panel.best.items():
        if p is not panel.overall:
            ax.plot([p.x], [p.y], marker="D", markersize=6, color=colors[group],
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none", zorder=4)  # fmt: skip
    top = panel.overall
    ax.plot(
        [top.x],
        [top.y],
        marker="*",
        markersize=16,
        color=colors[top.group],
        markeredgecolor="black",
        linestyle="none",
        zorder=5,
    )
    if log_y:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    xs_all = [p.x for s in panel.segments for p in s.points]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in xs_all):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if by and 1 < len(panel.best) <= 12:
        _legend(ax, panel, colors, x=x, by=by)
    ax.set_ylabel(panel.y + (" (log)" if log_y else ""))
    ax.grid(alpha=0.3, which="both" if log_y else "major")
