"""Epoch arithmetic: which rotation a time falls in, and when the next one begins.

Its own module, with nothing but ``math``, so that the workers can use it without loading the
route lists (and ``dataclasses``, which brings ``inspect``, ``ast`` and ``dis``: about 1 MB of
private memory per process).
"""

from __future__ import annotations

import math


def epoch_at(t: float, rotation_time: float) -> int:
    return math.floor(t / rotation_time)


def next_boundary(t: float, rotation_time: float) -> float:
    """The absolute time at which the epoch after the one containing ``t`` begins."""
    return (epoch_at(t, rotation_time) + 1) * rotation_time
