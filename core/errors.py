"""Errors a user can cause.

Each carries one sentence that says what is wrong and how to fix it; the CLI
prints it without a traceback and exits with ``exit_code``. Anything else that
escapes is our bug and keeps its traceback.

What the user wrote goes into a sentence through :func:`show` or
:func:`printable`, and text from a library through :func:`one_line`, so that a
line break in a key, a value or a parser's message cannot split the sentence.
"""

import errno
import os


class PipelineError(Exception):
    """A problem the user can fix (config, data, weights, budgets)."""

    exit_code = 2


class ConfigError(PipelineError):
    """The config file or a --set override is invalid."""


class DataError(PipelineError):
    """The dataset cannot be used as given."""


class WeightsError(PipelineError):
    """Backbone weights cannot be loaded."""


class BudgetError(PipelineError):
    """An exported file failed its validation budget; nothing new was published."""

    exit_code = 1


class ExportError(PipelineError):
    """A converter could not make a file of a format the config asks for; nothing new was published."""

    exit_code = 1


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


def causes(exc: BaseException | None):
    """``exc`` and every exception it was raised from or during, nearest first (each once: chains can loop)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a full disk: an OSError with ENOSPC or
    EDQUOT, or a library's error (TensorFlow, h5py, a converter's child process) that quotes its text."""
    return any((isinstance(e, OSError) and e.errno in _FULL_ERRNOS)
               or any(text in str(e).lower() for text in _FULL_TEXTS) for e in causes(exc))


def show(value: object, limit: int = 80) -> str:
    """A value the user wrote, quoted (``repr``), so a line break or control character in it stays visible.

    A long path keeps its tail (``'…/build/tiny/export/staging/tiny_int8.tflite'``): the file
    and the folders nearest it say which file is meant, while the head is the same long prefix
    (a home, a CI workspace, a pytest tmp folder) in every message.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    raw = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(raw, str) and "/" in raw:
        tail = raw[-(limit - 3):]  # room for the quotes and the ellipsis
        cut = tail.find("/")
        return repr("…" + (tail[cut:] if cut > 0 else tail))
    return text[: limit - 3] + "..."


def printable(text: str) -> str:
    """Text as the user typed it (a key, a file name), with each unprintable character written as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(text: object, limit: int = 200) -> str:
    """A library's message as one line of bounded length, whitespace runs (line breaks too) as one space."""
    flat = " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
