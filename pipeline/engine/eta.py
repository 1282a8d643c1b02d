"""How long training has left, from the epochs already timed on this machine: the README's timings
come from a few CPUs, and a CPU without native bf16 or AVX-512 trains several times slower, so the
log says what the run in front of the user will take."""
from __future__ import annotations

import statistics


def typical_epoch(epoch_seconds: list[float]) -> float | None:
    """The median timed epoch; the first (loader workers starting, caches filling) is left out once
    others exist. None before any epoch is timed."""
    timed = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    return statistics.median(timed) if timed else None


def seconds_left(epoch_seconds: list[float], epochs_left: int, images: int = 0,
                 image_epochs_after: int = 0) -> tuple[float, float] | None:
    """(this run, this run and the runs after it): the run's remaining epochs at its typical epoch,
    and `image_epochs_after` (training images x epochs of the runs still to come) at this run's
    seconds per training image and epoch. None before any epoch is timed."""
    epoch = typical_epoch(epoch_seconds)
    if epoch is None:
        return None
    run = epoch * max(epochs_left, 0)
    return run, run + (epoch / images * image_epochs_after if images > 0 else 0.0)


def duration(seconds: float) -> str:
    """45 s, 12 min, 3h05m."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m"
