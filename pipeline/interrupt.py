"""SIGINT and SIGTERM: stop cleanly, with the shell's exit status (130 and 143).

While the pipeline runs, SIGTERM raises ``Interrupted`` wherever the program
is, as Ctrl-C raises KeyboardInterrupt: ``finally`` blocks still run (the
temporary files of ``core.io.atomic_path`` are removed) and the stage that
was running writes no stamp. Fine-tuning defers both signals instead
(``deferred``) and stops between two batches, so that the checkpoint of the
last completed epoch is what the next run resumes from.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RUN_AGAIN = "stages that finished keep their stamps; run again to continue."


class Interrupted(BaseException):
    """The run was stopped by SIGINT or SIGTERM.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in
    TensorFlow, Keras or our own code swallows it.
    """

    def __init__(self, signum: int, message: str = RUN_AGAIN):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal


def _can_handle_signals() -> bool:
    # Python accepts signal handlers only from the main thread; elsewhere the defaults stay.
    return threading.current_thread() is threading.main_thread()


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``Interrupted`` instead of killing the process on the spot."""
    if not _can_handle_signals():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequest:
    """What ``deferred`` hands the training loop: the signal received so far, if any."""

    def __init__(self):
        self.signum: Optional[int] = None

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal came: the caller is at a point where stopping loses nothing."""
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextlib.contextmanager
def deferred() -> Iterator[StopRequest]:
    """Inside the block, the first SIGINT or SIGTERM is only recorded; the caller polls ``check()``.

    A second signal raises at once, for a user who does not want to wait for
    the current batch to end.
    """
    request = StopRequest()
    if not _can_handle_signals():
        yield request
        return

    def record(signum, frame):
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum

    previous = {signum: signal.signal(signum, record) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
