"""Progress of long work: a bar in a terminal, plain lines in a log.

On a terminal ``Progress`` draws a tqdm bar; when the stream is not one (a log file, CI, a pipe)
it writes one line whenever 10 % more is done or `every` seconds have passed, whichever comes
first, and a last line when it closes: what, count, the latest figures, rate and ETA.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between two plain lines at most (while work goes on).
LINE_EVERY = 30.0


class Progress:
    """Counts `total` units of `what`; ``update`` adds done units and the figures to show."""

    def __init__(
        self,
        total: int,
        what: str,
        *,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float = LINE_EVERY,
        terminal: bool | None = None,
    ) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.done = self._started_at = initial
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.every = every
        self.figures: dict[str, str] = {}
        self._start = self._last_line = time.monotonic()
        self._next_tenth = self._tenth_after(initial)
        self._last_done = initial
        if terminal is None:
            terminal = _is_terminal(self.stream)
        self._bar = None
        if enabled and terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=what,
                file=self.stream,
                unit=unit,
                dynamic_ncols=True,
            )

    def update(self, count: int = 1, **figures: str) -> None:
        """`count` more units done; `figures` (name -> formatted value) replace the shown ones."""
        self.done += count
        self.figures.update(figures)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(count)
            if figures:
                self._bar.set_postfix(self.figures, refresh=False)
            return
        now = time.monotonic()
        if self.done >= self._next_tenth or now - self._last_line >= self.every:
            self._line(now)

    def close(self) -> None:
        """Finish the bar, or write the last line (when anything was done since the first)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last_done != self.done:
            self._line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def line(self) -> str:
        """The plain line for the current state."""
        elapsed = time.monotonic() - self._start
        new = self.done - self._started_at
        rate = new / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}s"]
        if self.total > 0:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts += [f"{name} {value}" for name, value in self.figures.items()]
        parts.append(f"{rate:.3g} {self.unit}s/s")
        if rate > 0 and self.total > self.done:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        return ", ".join(parts)

    def _line(self, now: float) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line = now
        self._last_done = self.done
        self._next_tenth = self._tenth_after(self.done)

    def _tenth_after(self, done: int) -> int:
        """The first count past `done` that completes another tenth of the total."""
        if self.total <= 0:
            return 1 << 62
        tenth = (10 * done) // self.total + 1
        return -(-tenth * self.total // 10)


def format_seconds(seconds: float) -> str:
    """`seconds` as 42s, 3m05s or 1h02m."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, seconds = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
