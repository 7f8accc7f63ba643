"""Background work that waits for a burst of callers to be served.

Refilling a warm pool, making disks ahead, renaming and recording new sessions: each takes the
engine host's CPU from the first commands of the sandboxes a burst is handed. So such work waits
until nobody has been served for :data:`QUIET` seconds, but no longer than :data:`LATEST` seconds
after it began to wait: a steady stream of callers starves none of it.
"""

from __future__ import annotations

import time

QUIET = 0.5
LATEST = 2.0


def burst_left(last_served: float, waiting_since: float) -> float:
    """Seconds the work should still wait (``<= 0``: go now), given when a caller was last served
    and when the work began to wait (both ``time.monotonic()``)."""
    now = time.monotonic()
    return min(QUIET - (now - last_served), LATEST - (now - waiting_since))
