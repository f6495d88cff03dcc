"""log(): one line on the current sys.stdout, in every test (pytest's log capture attaches its own
handlers to our logger; log() must leave their streams alone)."""

from __future__ import annotations

import pytest

from codonlm.log import log, log_to


@pytest.mark.parametrize("word", ["first", "second"])  # the second call used to break pytest's capture
def test_log_line_reaches_the_current_stdout(word, capsys):
    log(f"[test] {word}")
    assert capsys.readouterr().out == f"[test] {word}\n"


def test_log_to_moves_or_drops_lines_and_restores(capsys):
    with log_to("stderr"):
        log("[test] aside")
        with log_to(None):
            log("[test] dropped")
        log("[test] aside again")
    log("[test] back")
    captured = capsys.readouterr()
    assert captured.err == "[test] aside\n[test] aside again\n" and captured.out == "[test] back\n"
