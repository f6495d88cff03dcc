"""One way to report progress: `log()` lines (Python logging, to stdout) and `progress()` bars (tqdm).

Set CODONLM_QUIET=1 (or pass quiet=True) for CI logs: bars are off and only log lines remain.
A log line is one clean line, so `runs/<RUN_ID>/log.txt` stays readable while bars go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

_LOGGER_NAME = "codonlm"


class _StdoutHandler(logging.StreamHandler):
    """Our handler: writes to whatever sys.stdout is at the time (a tee, pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # not setStream(): it flushes the old stream, which may be closed by now
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

    with tqdm.external_write_mode(file=sys.stdout):
        _logger().info(message)


def quiet() -> bool:
    return os.environ.get("CODONLM_QUIET", "") not in ("", "0")


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool | None = None, **kwargs):
    """A tqdm bar with ETA on stderr, off under CODONLM_QUIET or when `disable` is True."""
    from tqdm import tqdm

    off = quiet() if disable is None else (disable or quiet())
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=off, dynamic_ncols=True,
                mininterval=1.0, **kwargs)
