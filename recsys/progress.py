"""Progress of long steps: a periodic log line with rate and ETA, or a tqdm bar.

Why: a nightly job that is silent for twenty minutes cannot be told apart from a hung one,
and a scheduler's log (``--log-format json``) has no terminal for a tqdm bar. Every step
that can take more than a minute (model fits, encodings, similarity blocks) reports through
:class:`Progress`:

* always, through :mod:`logging`, a line every ``interval`` seconds,
  ``"ALS fit: 5/15 iterations (0.83 iterations/s, ETA 12s)"``, so the text and the JSON log
  formats carry the same information (the JSON formatter puts it in ``msg``), plus one
  closing line with the total time when the step took longer than ``interval``;
* with ``show_progress=True`` on a terminal, a tqdm bar instead of the periodic lines (the
  closing line is still logged), so an interactive user sees a live bar and a log file
  never gets carriage-return noise.

Steps whose count is unknown up front (``total=None``) log the count and rate only.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["Deadline", "Progress", "format_seconds", "track"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: default seconds between two progress lines: often enough to tell a live job from a hung
#: one, rare enough that a 10-hour job writes a few hundred lines
DEFAULT_INTERVAL = 30.0


def format_seconds(seconds: float) -> str:
    """``12s``, ``3m05s``, ``1h02m``: short enough for a log line, exact enough to plan by."""
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Count the units of a long step and report rate and ETA (see the module docstring).

    Parameters
    ----------
    step : str
        What is running, as the user would name it ("ALS fit", "encode items").
    total : int, optional
        Units expected; ``None`` when unknown (no ETA then).
    unit : str
        Plural name of a unit ("iterations", "texts", "batches").
    interval : float
        Seconds between two log lines (> 0).
    show_progress : bool
        Show a tqdm bar instead of the periodic lines when stderr is a terminal.
    logger : logging.Logger, optional
        Where the lines go (default: this module's logger); pass the caller's so the line
        names the module doing the work.
    clock : callable
        Monotonic seconds; injectable for tests.
    closing_line : bool
        Log the total when a long step ends; ``False`` when the caller logs its own summary.

    Examples
    --------
    >>> with Progress("ALS fit", total=15, unit="iterations") as p:  # doctest: +SKIP
    ...     for _ in range(15):
    ...         step()
    ...         p.update()
    """

    def __init__(self, step: str, total: int | None = None, unit: str = "it", interval: float = DEFAULT_INTERVAL,
                 show_progress: bool = False, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, closing_line: bool = True) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.step, self.total, self.unit, self.interval = step, total, unit, float(interval)
        self.closing_line = closing_line
        self.log = logger or log
        self.clock = clock
        self.n = 0
        self.start = self._last = clock()
        self.lines = 0  # periodic lines written (tests, and whether to write the closing one)
        self._bar: Any = None
        if show_progress and _is_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=step, unit=f" {unit}", leave=False)

    # -- numbers ------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the step started."""
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        """Units per second so far (0 before the first unit)."""
        e = self.elapsed
        return self.n / e if e > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (``inf`` when unknown)."""
        if self.total is None or self.n <= 0:
            return float("inf")
        return max(self.total - self.n, 0) * self.elapsed / self.n

    def message(self) -> str:
        """The progress line: ``"step: n/total unit (rate unit/s, ETA t)"``."""
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        eta = f", ETA {format_seconds(self.eta)}" if self.total is not None else ""
        return f"{self.step}: {count} {self.unit} ({self.rate:.3g} {self.unit}/s, {format_seconds(self.elapsed)} elapsed{eta})"

    # -- updates ------------------------------------------------------------------------
    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more units; log a line when ``interval`` seconds passed since the last.

        ``postfix`` (e.g. ``loss=0.31``) is appended to the line and shown on the bar.
        """
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self.lines += 1
            extra = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in postfix.items())
            self.log.info("%s%s", self.message(), extra)

    def close(self) -> None:
        """Close the bar; log the total when the step outlasted one interval."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.closing_line and self.elapsed >= self.interval:
            self.log.info("%s: done, %d %s in %s (%.3g %s/s)", self.step, self.n, self.unit,
                          format_seconds(self.elapsed), self.rate, self.unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
            self._bar = None


def track(iterable: Iterable[T], step: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Yield from ``iterable``, counting each item with a :class:`Progress` (same keywords)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(step, total, **kwargs) as p:
        for x in iterable:
            yield x
            p.update()


class Deadline:
    """A wall-clock budget: seconds left, and whether a unit of work still fits.

    ``Deadline(None)`` never expires, so callers need no special case for "no budget".
    The two-tower trainer stops on it and shares it between ensemble members.

    Parameters
    ----------
    seconds : float, optional
        The budget from now; ``None`` or 0 = unlimited.
    clock : callable
        Monotonic seconds; injectable for tests.
    """

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.seconds = float(seconds) if seconds else None

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    def remaining(self) -> float:
        """Seconds left (``inf`` without a budget, never negative)."""
        if self.seconds is None:
            return float("inf")
        return max(0.0, self.start + self.seconds - self.clock())

    def expired(self) -> bool:
        return self.seconds is not None and self.remaining() <= 0.0

    def fits(self, seconds: float) -> bool:
        """Whether work expected to take ``seconds`` ends before the deadline."""
        return self.seconds is None or seconds <= self.remaining()

    def share(self, parts: int) -> float | None:
        """An even share of what is left among ``parts`` consumers (``None`` without a budget)."""
        return None if self.seconds is None else self.remaining() / max(int(parts), 1)

    def part(self, parts: int) -> Deadline:
        """A deadline starting now with :meth:`share` ``(parts)`` seconds, on the same clock.

        A share of 0 s stays a (spent) budget, never "unlimited".
        """
        share = self.share(parts)
        d = Deadline(None, clock=self.clock)
        d.seconds = share
        return d


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
