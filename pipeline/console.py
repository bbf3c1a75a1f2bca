"""What the command line prints: our stage lines, warnings that matter, and none of the libraries' chatter.

TensorFlow's C++ runtime logs through absl before anything can configure it (its
start-up lines ignore ``TF_CPP_MIN_LOG_LEVEL`` in TensorFlow 2.21: measured, every
value still printed the oneDNN and CUDA lines, once per TensorFlow library), and
the TFLite converter writes ``fully_quantize: ...`` straight to file descriptor 2.
So the quiet console works at two levels:

- **File descriptor 2** is a pipe read by a thread: each line that matches ``NOISE``
  goes to the build's ``tool-output.log``; every other line reaches the terminal as it
  was. Child processes inherit the pipe, so theirs are sorted the same way.
- **Python logging**: our loggers (``pipeline``) at INFO, every other logger at
  WARNING on the console; the log file gets every record at INFO and above.

``--verbose`` (``make ... VERBOSE=1``) installs neither: everything prints as the
libraries wrote it.
"""

from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path

LOG_NAME = "tool-output.log"

# Lines the libraries print that say nothing a user of this pipeline can act on.
# Each was seen on this project's runs (2-core CPU host, TensorFlow 2.21, onnxruntime 1.2x).
NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"^I\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\]",                   # any absl INFO line of the C++ runtime
    r"^[WE]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\] .*(cuInit|cuda|CUDA|TensorRT)",  # no GPU here, said three ways
    r"^To enable the following instructions: .* rebuild TensorFlow",  # cpu_feature_guard's second line
    r"^fully_quantize: \d+, inference_type: \d+",               # the TFLite converter's settings
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU",  # every LiteRT interpreter, once each
    r"Statistics for quantized inputs were expected, but not specified",
    r"^\s+warnings\.warn\($",                                   # the source line under a filtered warning
))

OURS = ("pipeline", "benchmarks", "exporters", "core")


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISE)


class _Filter:
    """Sorts what is written to file descriptor 2 into the terminal and the log file."""

    def __init__(self) -> None:
        self.terminal = os.dup(2)
        read, self.write = os.pipe()
        self.reader = os.fdopen(read, "rb", buffering=0)
        self.lock = threading.Lock()
        self.held: list[bytes] = []  # noise met before the build folder is known
        self.log = None
        os.dup2(self.write, 2)
        # A crash in native code still reaches the terminal: the thread may not run again.
        faulthandler.enable(file=os.fdopen(os.dup(self.terminal), "w"), all_threads=True)
        self.thread = threading.Thread(target=self._pump, name="console-filter", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = self.reader.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._route(line + b"\n")
        if pending:
            self._route(pending)

    def _route(self, line: bytes) -> None:
        if is_noise(line.decode("utf-8", "replace")):
            with self.lock:
                if self.log is None:
                    if len(self.held) < 10_000:
                        self.held.append(line)
                else:
                    try:
                        self.log.write(line)
                        self.log.flush()
                    except OSError:  # a full disk: the line is lost, the reader must go on (a full pipe would hang)
                        pass
        else:
            os.write(self.terminal, line)

    def attach(self, path: Path) -> None:
        with self.lock:
            if self.log is not None:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(path, "ab")
            self.log.writelines(self.held)
            self.log.flush()
            self.held.clear()

    def close(self) -> None:
        try:
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        os.dup2(self.terminal, 2)  # the pipe's last writer in this process goes: the thread reads to the end
        os.close(self.write)
        self.thread.join(timeout=5)


_filter: _Filter | None = None
_configured = False
_file_handler: logging.Handler | None = None


class _ConsoleRecords(logging.Filter):
    """Our records from INFO; another library's from WARNING, unless it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OURS:
            return True
        return record.levelno >= logging.WARNING and not is_noise(record.getMessage())


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is at each record, not as it was at setup: a script
    (or a test) that calls ``main()`` again may have replaced it, and the old one may be closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup(verbose: bool) -> None:
    """Configure the console for one command-line run (call before TensorFlow is imported)."""
    global _filter, _configured
    if _configured:  # a script may call main() more than once: one handler, one filter
        return
    _configured = True
    root = logging.getLogger()
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if verbose:
        return
    handler.addFilter(_ConsoleRecords())
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    # TFLite's QuantizationDebugger (the sensitivity ranking) builds a tf.lite.Interpreter inside;
    # our own code runs LiteRT's.
    warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
    if _filter is None:
        _filter = _Filter()
        atexit.register(_filter.close)


def attach_log(build_root: Path) -> Path | None:
    """Send what the console leaves out to ``build_root/tool-output.log`` from now on (and what it held)."""
    global _file_handler
    if _filter is None:
        return None
    path = Path(build_root) / LOG_NAME
    _filter.attach(path)
    if _file_handler is None:
        _file_handler = logging.FileHandler(path, encoding="utf-8")
        _file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(_file_handler)
    return path
