"""One build at a time per build folder: an exclusive lock on ``build/<name>/.lock``.

Parallel CI jobs, or a user and a cron job, running ``make export`` on one build folder
would write the same stage folders at once. The lock is the kernel's (``flock``), so
it is released when its process ends, however it ends: a run killed with SIGKILL
leaves no lock behind, only the lock file with its PID and command in it, which the
next run notices and reports as taken over. The file's text is for people; the
``flock`` is what excludes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import PipelineError

log = logging.getLogger("pipeline")
LOCK_NAME = ".lock"


class BuildLocked(PipelineError):
    """Another run holds the build folder."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _who(holder: dict) -> str:
    if not holder:
        return "another run"
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"PID {holder.get('pid')} ({holder.get('command', '?')}, since {since})"


@contextmanager
def hold(root: Path, command: str, wait: bool = False):
    """Hold ``root``'s lock while the block runs; BuildLocked (exit 2) at once if another run holds it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _holder(fd)
            if not wait:
                raise BuildLocked(f"{root} is being built by {_who(other)}; wait for it to finish, or run again "
                                  "with --wait to start when it does.") from None
            log.info("[lock] %s is being built by %s: waiting for it", root, _who(other))
            fcntl.flock(fd, fcntl.LOCK_EX)
        left = _holder(fd)
        if left and left.get("pid") != os.getpid() and not _alive(left.get("pid")):
            # The text of a run that ended without clearing it: killed, or its machine went down.
            log.warning("[lock] took over %s from %s, which is no longer running (stopped without finishing)",
                        path, _who(left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "started": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean end leaves no holder to take over from
    finally:
        os.close(fd)  # closing the descriptor releases the flock
