"""Per-iteration timestamps that cost no host sync inside a loop."""

import time

import torch


class IterationClock:
    """Marks the start on creation and each ``mark()`` after; CUDA events on GPUs (read once, at
    the end), ``perf_counter`` on CPUs."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds from the start to each mark (the first is 0)."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [self.marks[0].elapsed_time(m) / 1000.0 for m in self.marks]
        return [m - self.marks[0] for m in self.marks]
