"""Constant load on a loopback URL with `hey` (Debian package `hey`), counted as the release benchmark reports it.

`hey` runs in the background at a fixed rate (`-q` per worker), one request per connection
(`-disable-keepalive`, as a front proxy talks to its upstream by default; it also keeps Go's client from
quietly retrying a request on a reused connection), until the `with` block ends:

    with Load("http://127.0.0.1:13000/api/version") as load:
        stage.up("v2.0.0")
    print(load.result.failed)
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from types import TracebackType

# hey's summary: "  [200]\t4004 responses", "  [12]\tGet ...: connection refused", "  99% in 0.0051 secs".
_COUNTED = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")
_PERCENTILE = re.compile(r"^\s*(\d+)% in (\d+\.\d+) secs$")


@dataclass(frozen=True)
class LoadResult:
    statuses: dict[int, int]
    """HTTP status -> answers with it."""
    errors: dict[str, int] = field(default_factory=dict)
    """Socket error (as hey words it) -> requests that got no answer because of it."""
    percentiles_ms: dict[int, float] = field(default_factory=dict)
    """Latency of the answered requests: percentile -> milliseconds."""

    @property
    def requests(self) -> int:
        """Requests sent: every answer and every socket error."""
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """Non-2xx answers and socket errors."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300) + sum(self.errors.values())


def parse(summary: str) -> LoadResult:
    """hey's text summary, by section."""
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    percentiles: dict[int, float] = {}
    section = ""
    for line in summary.splitlines():
        if line and not line.startswith(" "):
            section = line.strip()
            continue
        counted, percentile = _COUNTED.match(line), _PERCENTILE.match(line)
        if section == "Status code distribution:" and counted:
            statuses[int(counted[1])] = int(counted[2].split()[0])
        elif section == "Error distribution:" and counted:
            errors[counted[2]] = int(counted[1])
        elif section == "Latency distribution:" and percentile:
            percentiles[int(percentile[1])] = float(percentile[2]) * 1000
    return LoadResult(statuses, errors, percentiles)


class Load:
    """`hey` at `rate` requests per second over `workers` connections, for at most `max_seconds`."""

    def __init__(self, url: str, rate: int = 200, workers: int = 4, max_seconds: int = 600) -> None:
        hey = shutil.which("hey")
        if hey is None:
            raise RuntimeError("hey not found: run `bash .ci/install-target` first (Debian package hey)")
        self.argv = [hey, "-z", f"{max_seconds}s", "-c", str(workers), "-q", str(rate // workers)]
        self.argv += ["-disable-keepalive", url]
        self.process: subprocess.Popen[str] | None = None
        self.result = LoadResult({})

    def __enter__(self) -> Load:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self.process is not None
        # hey stops on SIGINT and prints its summary of what it sent until then.
        self.process.send_signal(signal.SIGINT)
        try:
            summary, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        self.result = parse(summary)
