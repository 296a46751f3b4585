"""Container logs: one line a record, `TIMESTAMP STREAM F|P TEXT`, size-capped with rotation.

F marks a full line, P a partial one (a write that did not end in a newline, or a line
longer than the record limit), as in the CRI log format that conmon writes.
"""

import os

from .reap import now

MAX_RECORD = 16384


class LogWriter:
    def __init__(self, path, max_bytes=1 << 20, keep=1):
        self.path = str(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.partial = {}

    def write(self, stream, data):
        buf = self.partial.pop(stream, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        out = [self._record(stream, b"F", line) for line in lines]
        while len(rest) > MAX_RECORD:
            out.append(self._record(stream, b"P", rest[:MAX_RECORD]))
            rest = rest[MAX_RECORD:]
        if rest:
            self.partial[stream] = rest
        if out:
            self._append(b"".join(out))

    def flush(self):
        for stream, rest in list(self.partial.items()):
            self._append(self._record(stream, b"P", rest))
        self.partial.clear()

    def _record(self, stream, tag, text):
        ts = now(6)
        return b"%s %s %s %s\n" % (ts.encode(), stream.encode(), tag, text)

    def _append(self, data):
        if self.size + len(data) > self.max_bytes and self.size:
            self._rotate()
        os.write(self.fd, data)
        self.size += len(data)

    def _rotate(self):
        os.close(self.fd)
        for i in range(self.keep, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = 0

    def close(self):
        self.flush()
        os.close(self.fd)


def parse(line):
    """(timestamp, stream, full, text) of one record line (bytes, without the newline)."""
    ts, stream, tag, text = (line.split(b" ", 3) + [b""])[:4]
    return ts.decode(), stream.decode(), tag == b"F", text


def files(path, keep=1):
    """The log files of a container, oldest first."""
    out = [f"{path}.{i}" for i in range(keep, 0, -1)] + [str(path)]
    return [p for p in out if os.path.exists(p)]
