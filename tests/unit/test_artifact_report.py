"""The artifact commands' result: bounded JSON, no secret ever, failures with the exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path

from modeldeploy.artifact.cli import main
from modeldeploy.artifact.report import MAX_RESULT_BYTES, emit, fail, redactor

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
STORE_KEY_ID = "STOREKEYID0123"


def test_store_credentials_are_redacted_everywhere(tmp_path: Path) -> None:
    r = redactor({"MD_STORE_AWS_SECRET_ACCESS_KEY": SECRET, "MD_STORE_AWS_ACCESS_KEY_ID": STORE_KEY_ID,
                  "AWS_SECRET_ACCESS_KEY": "source-secret-value"})
    term, err = tmp_path / "term", io.StringIO()
    line = fail(f"denied for {STORE_KEY_ID} using {SECRET} and source-secret-value", 77, r, term, {"key": "k"}, err)
    assert SECRET not in line + err.getvalue() + term.read_text()
    assert STORE_KEY_ID not in line and "source-secret-value" not in line
    doc = json.loads(term.read_text())
    assert doc == {"result": "failed", "exitCode": 77, "transient": False, "reason": line, "key": "k"}
    assert err.getvalue().splitlines()[-1] == f"artifact: error: {line}"


def test_result_is_bounded(tmp_path: Path) -> None:
    out = io.StringIO()
    huge = {"result": "built", "key": "k", "gates": {"origin": "x" * 5000}, "store": "s3://b/" + "p" * 3000}
    text = emit(huge, redactor({}), tmp_path / "term", out)
    assert len(text.encode()) <= MAX_RESULT_BYTES and json.loads(text)["key"] == "k"
    assert (tmp_path / "term").read_text() == text + "\n" and out.getvalue() == text + "\n"


def test_transient_failures_say_so(tmp_path: Path) -> None:
    fail("store unreachable", 75, redactor({}), tmp_path / "term", None, io.StringIO())
    assert json.loads((tmp_path / "term").read_text())["transient"] is True


def test_cli_refuses_bad_inputs_with_codes(tmp_path: Path) -> None:
    term = str(tmp_path / "term")
    assert main(["nope"], {}) == 2
    assert main(["fetch"], {"MD_TERMINATION_LOG": term}) == 77  # no store: the platform's configuration
    assert json.loads(Path(term).read_text())["reason"] == "MD_ARTIFACT_STORE is required"
    assert main(["fetch"], {"MD_TERMINATION_LOG": term, "MD_ARTIFACT_STORE": "ftp://x"}) == 2  # no key
    assert main(["fetch", "--key", "../etc"], {"MD_TERMINATION_LOG": term, "MD_ARTIFACT_STORE": "file:///x"}) == 2
    assert main(["fetch", "--key", "m-" + "0" * 32], {"MD_TERMINATION_LOG": term, "MD_ARTIFACT_STORE": "ftp://x"}) == 77
    assert "unsupported scheme ftp" in json.loads(Path(term).read_text())["reason"]
    assert main(["build"], {"MD_TERMINATION_LOG": term, "MD_SOURCE_URI": "file:///m.onnx", "MD_MODEL_NAME": "m",
                            "MD_ARTIFACT_STORE": "file:///x", "MD_MAX_BATCH_SIZE": "-1"}) == 2


def test_key_command_prints_the_key(tmp_path: Path, capsys) -> None:
    assert main(["key", "--source-uri", "s3://m/x.onnx", "--model-name", "digits", "--sha256", "a" * 64], {}) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["key"].startswith("digits-") and doc["keyInputs"]["source"] == {"sha256": "a" * 64}
