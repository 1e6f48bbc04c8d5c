"""Failure reporting: one line, in the termination log and last on stderr, and never a secret."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from modeldeploy.loader.report import MAX_MESSAGE, Redactor, fail, log, one_line, setup_logging

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_redacts_env_secrets_raw_and_url_encoded() -> None:
    r = Redactor.from_env({"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"})
    text = r(f"failed with {SECRET} and wJalrXUtnFEMI%2FK7MDENG%2BbPxRfiCYEXAMPLEKEY for AKIAEXAMPLE")
    assert SECRET not in text and "AKIAEXAMPLE" not in text and "%2FK7MDENG" not in text
    assert text.count("***") == 3


def test_redacts_url_userinfo_and_signed_queries() -> None:
    r = Redactor.from_env({}, ["https://bob:pa55word@h/m.onnx?X-Amz-Signature=deadbeef&token=t0ps3cret"])
    text = r("GET https://bob:pa55word@h/m.onnx?X-Amz-Signature=deadbeef&token=t0ps3cret failed")
    assert "pa55word" not in text and "deadbeef" not in text and "t0ps3cret" not in text
    # patterns also catch secrets the redactor was not told about
    generic = Redactor()("see https://u:p4ss@host/x?Signature=abc123&other=1")
    assert "p4ss" not in generic and "abc123" not in generic and "other=1" in generic


def test_one_line_and_bounded() -> None:
    assert one_line("a\nb\tc", Redactor()) == "a b c"
    long = one_line("x" * 5000, Redactor())
    assert len(long) == MAX_MESSAGE and long.endswith("…")


def test_fail_writes_termination_log_and_last_stderr_line(tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    err = io.StringIO()
    r = Redactor.from_env({"AWS_SECRET_ACCESS_KEY": SECRET})
    fail(f"access denied using {SECRET}\nsecond line", r, term, err)
    assert term.read_text() == "access denied using *** second line\n"
    assert err.getvalue().splitlines()[-1] == "model-loader: error: access denied using *** second line"


def test_fail_without_a_termination_log_still_reports(tmp_path: Path) -> None:
    err = io.StringIO()
    fail("boom", Redactor(), tmp_path / "missing-dir" / "log", err)
    assert "boom" in err.getvalue()


def test_log_lines_are_redacted_even_in_tracebacks() -> None:
    stream = io.StringIO()
    setup_logging(Redactor.from_env({"AWS_SECRET_ACCESS_KEY": SECRET}), stream)
    try:
        raise RuntimeError(f"library said {SECRET}")
    except RuntimeError:
        log.exception("fetch failed")
    log.setLevel(logging.INFO)
    assert SECRET not in stream.getvalue() and "library said ***" in stream.getvalue()
