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
_HANDLER_NAME = "codonlm-stdout"


def _logger() -> logging.Logger:
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log(message: str) -> None:
    """One progress or result line, e.g. log("[evaluate] perplexity 40.5")."""
    logger = _logger()
    # follow sys.stdout when a caller swapped it (tee, pytest capture); only our own handler: others
    # attached to this logger (pytest's log capture) keep their streams. Assigned, not setStream(),
    # which would flush the previous stream, possibly closed by now.
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME and handler.stream is not sys.stdout:
            handler.stream = sys.stdout
    logger.info(message)


def quiet() -> bool:
    return os.environ.get("CODONLM_QUIET", "") not in ("", "0")


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool | None = None, **kwargs):
    """A tqdm bar with ETA on stderr, off under CODONLM_QUIET or when `disable` is True."""
    from tqdm import tqdm

    off = quiet() if disable is None else (disable or quiet())
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=off, dynamic_ncols=True,
                mininterval=1.0, **kwargs)
