"""Resident memory of the current process, for the benchmark worker to report on itself.

Each artifact runs in its own worker process, so the process's high-water mark
(VmHWM) is the peak memory that loading and running that one file needed, plus
the interpreter and the runtime library, which are measured separately
(``baseline``) before the model is loaded.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Highest resident set size of this process so far, in MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        # ru_maxrss is KiB on Linux but bytes on macOS.
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = raw / 1024 if sys.platform == "darwin" else raw
    return round(kb / 1024, 2)
