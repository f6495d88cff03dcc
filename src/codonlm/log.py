"""One way to report progress: `log()` lines (Python logging, to stdout) and `progress()` bars (tqdm).

Set CODONLM_QUIET=1 (or pass quiet=True) for CI logs: bars are off and only log lines remain.
A log line is one clean line, so `runs/<RUN_ID>/log.txt` stays readable while bars go to stderr.
`log_to("stderr")` keeps stdout for a command's product (query's table); `log_to(None)` drops the lines
(the non-main ranks of a distributed run, benches).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Literal

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
