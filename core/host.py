"""What this process may use of the machine it runs on."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """Cores this process may run on (CPU affinity, e.g. a container's cpuset), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
