"""One way to report progress: `log()` lines (Python logging, to stdout) and `progress()` bars (tqdm).

Set CODONLM_QUIET=1 (or pass quiet=True) for CI logs: bars are off and only log lines remain.
A log line is one clean line, so `runs/<RUN_ID>/log.txt` stays readable while bars go to stderr.
`log_to("stderr")` keeps stdout for a command's product (query's table); `log_to(None)` drops the lines
(the non-main ranks of a distributed run, benches). `run_log(run_dir)` copies stdout and stderr into the
run's log.txt while a command (or the whole pipeline) works on that run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from codonlm.errors import Interrupted, TrainingDiverged, UserError

Target = Literal["stdout", "stderr"] | None

_LOGGER_NAME = "codonlm"
_target: list[Target] = ["stdout"]  # the innermost log_to() last


def _stream():
    """Whatever sys.stdout (or sys.stderr, see log_to) is at the time: a tee, pytest's capture."""
    return sys.stderr if _target[-1] == "stderr" else sys.stdout


class _StdoutHandler(logging.StreamHandler):
    """Our handler: writes to _stream() at the time of each line."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = _stream()  # not setStream(): it flushes the old stream, which may be closed by now
        super().emit(record)


def _logger() -> logging.Logger:
    logger = logging.getLogger(_LOGGER_NAME)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log(message: str) -> None:
    """One progress or result line, e.g. log("[evaluate] perplexity 40.5").

    Written between progress-bar redraws, so a line never lands in the middle of a bar."""
    from tqdm import tqdm

    if _target[-1] is None:
        return
    with tqdm.external_write_mode(file=_stream()):
        _logger().info(message)


def warn(message: str) -> None:
    """One "warning: ..." line on stderr, whatever log_to says (stdout may carry a command's product, such as
    eval-perplexity's CSV), unless lines are dropped (log_to(None))."""
    if _target[-1] is None:
        return
    with log_to("stderr"):
        log(f"warning: {message}")


@contextlib.contextmanager
def log_to(target: Target) -> Iterator[None]:
    """Send log lines to stdout, stderr, or nowhere (None) while the block runs."""
    _target.append(target)
    try:
        yield
    finally:
        _target.pop()


def quiet() -> bool:
    return os.environ.get("CODONLM_QUIET", "") not in ("", "0")


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool | None = None, **kwargs):
    """A tqdm bar with ETA on stderr, off under CODONLM_QUIET or when `disable` is True."""
    from tqdm import tqdm

    off = quiet() if disable is None else (disable or quiet())
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=off, dynamic_ncols=True,
                mininterval=1.0, **kwargs)


class _Tee:
    """Copy a stream into runs/<RUN_ID>/log.txt.

    With `lines_only` (stderr) the log gets whole lines only, each as its last carriage-return
    segment: a progress bar redraws itself with '\\r', so the terminal shows it live while log.txt
    keeps clean lines instead of bar fragments.
    """

    def __init__(self, stream, log_file, lines_only: bool = False):
        self._stream, self._log, self._lines_only, self._pending = stream, log_file, lines_only, ""

    def write(self, text: str) -> int:
        if not self._lines_only:
            self._log.write(text)
        else:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                line = line.rsplit("\r", 1)[-1].rstrip()
                if line:
                    self._log.write(line + "\n")
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def run_log(run_directory: Path):
    """Tee stdout and stderr into runs/<RUN_ID>/log.txt while the block runs (once: nested calls,
    such as the stages of `codonlm pipeline`, write through the outer tee)."""
    if os.environ.get("CODONLM_TEED"):
        yield
        return
    Path(run_directory).mkdir(parents=True, exist_ok=True)
    saved = sys.stdout, sys.stderr
    with open(Path(run_directory) / "log.txt", "a", buffering=1) as log_file:
        sys.stdout, sys.stderr = _Tee(sys.stdout, log_file), _Tee(sys.stderr, log_file, lines_only=True)
        os.environ["CODONLM_TEED"] = "1"
        try:
            yield
        except (UserError, TrainingDiverged) as exc:  # main() prints it after the tee is gone: log it too
            log_file.write(f"error: {exc}\n")
            raise
        except Interrupted as exc:
            log_file.write(f"{exc}\n")
            raise
        finally:
            sys.stdout.flush()
            sys.stdout, sys.stderr = saved
            del os.environ["CODONLM_TEED"]
