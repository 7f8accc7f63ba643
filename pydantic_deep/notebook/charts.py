"""The monitor's pictures: each sandbox's CPU and memory over the last minutes, as inline SVG.

No chart library and no download: a sparkline is a few hundred bytes of SVG in an HTML widget,
redrawn with each refresh of :class:`SessionMonitor`.
"""

from __future__ import annotations

import collections
import html

__all__ = ["HISTORY_SECONDS", "STATE_COLOURS", "History", "sparkline", "state_badge"]

HISTORY_SECONDS = 300.0
"""How far back the charts go."""
STATE_COLOURS = {"running": "#2e7d32", "busy": "#ef6c00", "paused": "#1565c0", "stopped": "#757575",
                 "new": "#757575"}
_WIDTH, _HEIGHT = 160, 34
_MIN_SPAN = 60.0


class History:
    """A sandbox's samples (time, CPU seconds so far, memory bytes) over the last :data:`HISTORY_SECONDS`."""

    def __init__(self, span: float = HISTORY_SECONDS) -> None:
        self.span = span
        self.samples: collections.deque[tuple[float, float, int]] = collections.deque()

    def add(self, when: float, cpu_seconds: float, memory_bytes: int) -> None:
        self.samples.append((when, cpu_seconds, memory_bytes))
        while self.samples and self.samples[0][0] < when - self.span:
            self.samples.popleft()

    def shown_span(self, now: float) -> float:
        """The seconds a chart spans: what the samples cover (a minute at least), up to the full span,
        so that a new sandbox's chart fills its width in its first minute, then scrolls."""
        covered = now - self.samples[0][0] if self.samples else 0.0
        return min(self.span, max(_MIN_SPAN, covered))

    def cpu_percent(self) -> list[tuple[float, float]]:
        """CPU use between samples, in percent of one core (200 = two cores busy)."""
        return [(t1, max(c1 - c0, 0.0) / (t1 - t0) * 100)
                for (t0, c0, _), (t1, c1, _) in zip(self.samples, list(self.samples)[1:], strict=False) if t1 > t0]

    def memory(self) -> list[tuple[float, float]]:
        return [(when, float(memory)) for when, _, memory in self.samples]


def sparkline(points: list[tuple[float, float]], now: float, *, span: float = HISTORY_SECONDS, floor: float,
              colour: str, kind: str, label: str) -> str:
    """A small SVG chart of ``points`` (time, value) over the ``span`` seconds up to ``now``.

    The vertical scale runs from 0 to the larger of ``floor`` and the highest value. The latest
    value is kept in ``data-last`` (and the number of points in ``data-count``) for tests and tools.
    """
    top = max([floor, *(value for _, value in points)])
    coordinates = " ".join(
        f"{max(0.0, (when - (now - span)) / span * _WIDTH):.1f},{_HEIGHT - 2 - value / top * (_HEIGHT - 4):.1f}"
        for when, value in points)
    last = points[-1][1] if points else 0.0
    line = (f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{coordinates}'/>"
            if len(points) > 1 else "")
    return (f"<svg class='pd-chart' data-kind='{kind}' data-last='{last:.1f}' data-count='{len(points)}' "
            f"width='{_WIDTH}' height='{_HEIGHT}' viewBox='0 0 {_WIDTH} {_HEIGHT}' "
            "style='background:#f6f6f6;border-radius:3px;vertical-align:middle'>"
            f"<title>{html.escape(label)}</title>{line}</svg>")


def state_badge(state: str) -> str:
    """A coloured label for a sandbox's state."""
    colour = STATE_COLOURS.get(state, "#757575")
    return (f"<span class='pd-state' data-state='{html.escape(state)}' style='background:{colour};color:#fff;"
            f"border-radius:8px;padding:1px 7px;font-size:90%'>{html.escape(state)}</span>")
