"""A one-line progress bar on a terminal (stderr); silent otherwise, so logs stay clean."""

import sys
import time


class Progress:
    def __init__(self, total, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done, self.t0 = max(1, total), 0, time.monotonic()
        self.label = ""

    def step(self, label=None, n=1):
        self.done = min(self.total, self.done + n)
        self.show(label)

    def show(self, label=None):
        if label is not None:
            self.label = label
        if not self.tty:
            return
        width = 28
        fill = int(width * self.done / self.total)
        line = (f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                f"{time.monotonic() - self.t0:5.0f}s  {self.label}")
        self.stream.write(line[:120].ljust(100))
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
