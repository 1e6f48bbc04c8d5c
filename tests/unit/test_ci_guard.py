"""The CI guard (tests/support/ci_guard.py) on throwaway test trees: under CI a skip, a deselection
or a tier that ran nothing fails the run; without CI they stay what they are."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.support import ci_guard

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
PASSING = "def test_ok():\n    assert True\n"
SKIPS = {  # how a test can skip -> the module that does it, skipping with the reason "no prometheus here"
    "call": "import pytest\n\ndef test_needs_prometheus():\n    pytest.skip('no prometheus here')\n",
    "skipif": "import pytest\n\n@pytest.mark.skipif(True, reason='no prometheus here')\n"
              "def test_needs_prometheus():\n    pass\n",
    "fixture": "import pytest\n\n@pytest.fixture\ndef prometheus():\n    pytest.skip('no prometheus here')\n\n"
               "def test_needs_prometheus(prometheus):\n    pass\n",
    "module": "import pytest\n\npytest.importorskip('no_such_module_md', reason='no prometheus here')\n\n"
              "def test_needs_prometheus():\n    pass\n",
}


@pytest.fixture
def tree(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Three tiers with one passing test each, no must-run modules, and no CI in the environment."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(ci_guard.SUMMARY_ENV, raising=False)
    pytester.makeini(f"[pytest]\n{ci_guard.MUST_RUN_INI} =\n")
    write(pytester, {"tests/unit/test_u.py": PASSING, "tests/integration/test_i.py": PASSING,
                     "tests/e2e/test_e.py": PASSING})
    return pytester


def write(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = pytester.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in the tree with the guard loaded as tests/conftest.py loads it."""
    return pytester.runpytest("-p", "tests.support.ci_guard", "-p", "no:cacheprovider", "-rs", *(args or ("tests",)))


@pytest.mark.parametrize("how", sorted(SKIPS))
def test_a_skip_fails_the_run_under_ci(tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    write(tree, {"tests/integration/test_prom.py": SKIPS[how]})
    monkeypatch.setenv("CI", "true")
    result = run(tree)
    assert result.ret != pytest.ExitCode.OK
    out = result.stdout.str()
    assert "CI forbids skips" in out and "no prometheus here" in out, out
    assert "tests/integration/test_prom.py" in out
    assert result.parseoutcomes().get("skipped", 0) == 0


@pytest.mark.parametrize("how", sorted(SKIPS))
def test_without_ci_a_skip_stays_a_skip(tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    write(tree, {"tests/integration/test_prom.py": SKIPS[how]})
    monkeypatch.setenv("CI", "false")
    result = run(tree)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3, skipped=1)
    assert "CI guard" not in result.stdout.str()


def test_ci_set_to_1_counts_as_ci(tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree, {"tests/integration/test_prom.py": SKIPS["call"]})
    monkeypatch.setenv("CI", "1")
    assert run(tree).ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("e2e", [None, "# helpers only, no test\n", "def helper():\n    pass\n"],
                         ids=["no-directory", "empty-module", "no-test-function"])
def test_a_tier_that_ran_no_test_fails_under_ci(tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                e2e: str | None) -> None:
    if e2e is None:
        (tree.path / "tests/e2e/test_e.py").unlink()
        (tree.path / "tests/e2e").rmdir()
    else:
        write(tree, {"tests/e2e/test_e.py": e2e})
    assert run(tree).ret == pytest.ExitCode.OK  # without CI: fine

    monkeypatch.setenv("CI", "true")
    result = run(tree)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI guard: this run tested less than CI requires*",
                                 "*tests/e2e: no test ran*", "*2 passed*1 error*"])


def test_deselecting_fails_under_ci(tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree, {"tests/integration/test_more.py": PASSING + "\ndef test_other():\n    pass\n"})
    assert run(tree, "tests", "-k", "not other").ret == pytest.ExitCode.OK  # a developer's -k: fine

    monkeypatch.setenv("CI", "true")
    result = run(tree, "tests", "-k", "not other")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 test(s) deselected*tests/integration/test_more.py::test_other*"])


def test_a_module_with_no_test_run_fails_under_ci_even_when_its_tier_ran(
        tree: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree, {"tests/integration/test_gone.py": PASSING})
    monkeypatch.setenv("CI", "true")
    result = run(tree, "tests", "--deselect", "tests/integration/test_gone.py::test_ok")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*tests/integration/test_gone.py: no test ran*"])


def test_a_must_run_module_that_is_missing_fails_under_ci(tree: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tree.makeini(f"[pytest]\n{ci_guard.MUST_RUN_INI} =\n    tests/integration/test_prometheus_source.py\n")
    monkeypatch.setenv("CI", "true")
    result = run(tree)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*tests/integration/test_prometheus_source.py: must run under CI "
                                 "(it needs Prometheus and Triton) but does not exist*"])


def test_only_what_the_command_line_covers_is_required(tree: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`CI=true make unit` runs tests/unit alone: the other tiers are not its to run (.ci/run's
    verify step checks that `make test` ran them all)."""
    monkeypatch.setenv("CI", "true")
    assert run(tree, "tests/unit").ret == pytest.ExitCode.OK
    assert run(tree, "tests/unit/test_u.py::test_ok").ret == pytest.ExitCode.OK


def test_a_complete_run_passes_under_ci_and_its_summary_verifies(tree: pytest.Pytester,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tree.path / "summary.jsonl"
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(ci_guard.SUMMARY_ENV, str(summary))
    result = run(tree)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3)
    lines = summary.read_text().splitlines()
    assert json.loads(lines[0])["ok"] is True
    assert json.loads(lines[0])["ran"] == {"tests/unit/test_u.py": 1, "tests/integration/test_i.py": 1,
                                           "tests/e2e/test_e.py": 1}
    assert ci_guard.verify(lines, must_run=()) == []
    assert ci_guard.verify(lines, must_run=["tests/e2e/test_other.py"]) == [
        "tests/e2e/test_other.py: no test ran in any session, and it must under CI"]


def test_verify_fails_when_no_session_ran_a_tier_or_one_failed(tree: pytest.Pytester,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tree.path / "summary.jsonl"
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv(ci_guard.SUMMARY_ENV, str(summary))
    assert run(tree, "tests/unit").ret == pytest.ExitCode.OK
    assert run(tree, "tests/integration").ret == pytest.ExitCode.OK
    assert ci_guard.verify(summary.read_text().splitlines(), must_run=()) == ["tests/e2e: no test ran in any session"]
    write(tree, {"tests/e2e/test_e.py": SKIPS["call"]})
    assert run(tree, "tests/e2e").ret == pytest.ExitCode.TESTS_FAILED
    found = ci_guard.verify(summary.read_text().splitlines(), must_run=())
    assert found[-1] == "tests/e2e: no test ran in any session"
    assert found[0].startswith("pytest -p tests.support.ci_guard") and "tests/e2e: no test ran" in found[0]


def test_verify_fails_when_the_guard_never_ran(tmp_path: Path) -> None:
    assert ci_guard.main(["verify", str(tmp_path / "absent.jsonl")]) == 1
    (tmp_path / "empty.jsonl").write_text("\n")
    assert ci_guard.main(["verify", str(tmp_path / "empty.jsonl")]) == 1
    assert ci_guard.verify([]) == ["no pytest session recorded a summary: the CI guard "
                                   "(tests/support/ci_guard.py) did not run"]


@pytest.mark.parametrize(("value", "enabled"), [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                                ("", False), ("false", False), ("0", False), (None, False)])
def test_what_counts_as_ci(value: str | None, enabled: bool) -> None:
    assert ci_guard.ci_enabled({} if value is None else {"CI": value}) is enabled


def test_every_must_run_module_exists_in_a_tier() -> None:
    """A renamed module must be renamed in MUST_RUN too (CI would fail on it, this says so sooner)."""
    for rel in ci_guard.MUST_RUN:
        assert (ROOT / rel).is_file(), rel
        assert any(rel.startswith(f"{tier}/") for tier in ci_guard.TIERS), rel


def test_the_suite_loads_the_guard(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("tests.support.ci_guard")
