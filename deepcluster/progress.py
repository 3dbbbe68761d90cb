"""Progress of a long phase (listing, checking, features, training), suited to where it goes.

On a terminal: one line redrawn in place, at most a few times a second. Otherwise (a log file, a
pipe, a scheduler's output): a line every ``every`` seconds (and after the first step that
counts any item, so a log shows the run has started), each with the phase's images per
second. Text that costs something to produce, such as a loss that needs a device sync, is
passed as a callable and evaluated only when a line is due.
"""

import shutil
import sys
import time
from collections.abc import Callable

_TTY_REFRESH = 0.5  # seconds between redraws of the terminal line


class Progress:
    """Counts the steps and images of one phase and reports them now and then.

    ``total`` is the number of steps when known; ``every`` the seconds between lines when the
    output is not a terminal (0: a line per step); ``show`` False keeps it silent (ranks > 0).
    """

    def __init__(self, desc: str, total: int | None = None, every: float = 10.0,
                 show: bool = True, unit: str = "img"):
        self.desc, self.total, self.every, self.show, self.unit = desc, total, every, show, unit
        self.tty = show and sys.stdout.isatty()
        self.steps = self.items = 0
        self.start = self._last = time.perf_counter()
        self._shown = False  # a line was printed

    def rate(self) -> float:
        """Items per second since the phase began."""
        return self.items / max(time.perf_counter() - self.start, 1e-9)

    def line(self, extra: str = "") -> str:
        done = f"step {self.steps}/{self.total}" if self.total else f"{self.items} {self.unit}"
        text = f"{self.desc} {done}" + (f" {extra}" if extra else "")
        text += f" | {self.rate():.0f} {self.unit}/s"
        if self.total and 0 < self.steps < self.total:
            left = (time.perf_counter() - self.start) * (self.total / self.steps - 1)
            text += f" | eta {left / 60:.1f} min" if left >= 60 else f" | eta {left:.0f} s"
        return text

    def step(self, items: int, extra: Callable[[], str] | None = None) -> None:
        """One step of ``items`` done; print if a line is due."""
        self.steps += 1
        self.items += items
        if not self.show:
            return
        now = time.perf_counter()
        if self.tty:
            due = now - self._last >= _TTY_REFRESH or self.steps == self.total
        else:
            # The first line waits for an item: listing a folder of folders starts with 0 files.
            first = not self._shown and self.items > 0
            due = self.every == 0 or first or now - self._last >= self.every
        if due:
            self._last, self._shown = now, True
            text = self.line(extra() if extra is not None else "")
            if self.tty:
                width = shutil.get_terminal_size().columns - 1
                print("\r" + text[:width].ljust(width), end="", flush=True)
            else:
                print(text, flush=True)

    def close(self) -> float:
        """End the phase (ends the terminal line); returns its seconds."""
        if self.tty and self.steps:
            print(flush=True)
        return time.perf_counter() - self.start
