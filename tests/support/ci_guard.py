"""Under CI, a test that did not run fails the run (issue 13: tests that cannot pass by accident).

Many tests need a real part (Prometheus, Helm, argocd, MinIO, Triton, the real node) and skip
when it is missing. On a developer's machine that is a convenience; in CI it would turn a missing
binary into a green run that tested nothing. With CI=true (or 1, yes) this plugin:

- turns every skip (`pytest.skip`, `skipif`, `importorskip`, a fixture's skip, a module-level
  skip) into a failure naming the test and the reason (xfail stays an expected failure);
- fails the run if any test was deselected (`-k`, `-m`, `--deselect`);
- at the end, fails the run unless every tier the command line covers (TIERS), every test module
  in it and every must-run module (MUST_RUN, the ones needing a real part) ran at least one test;
- appends a JSON line about the session to $MD_CI_GUARD_SUMMARY when that is set: `.ci/run`
  checks it after `make test` (`python -m tests.support.ci_guard verify FILE`), so a run in which
  this plugin never loaded, or which left out a whole tier, fails too.

Without CI nothing changes: skips are skips and `-k` works. Registered by tests/conftest.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections import Counter
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TIERS = ("tests/unit", "tests/integration", "tests/e2e")

# Modules that need a real part, by what they need: each must run under CI. A module listed
# here that disappears fails the run too, so dropping a real-part test is a visible change.
MUST_RUN: dict[str, str] = {
    "tests/unit/test_chart_monitoring.py": "helm",
    "tests/integration/test_chart.py": "helm",
    "tests/integration/test_prometheus_source.py": "Prometheus and Triton",
    "tests/integration/test_dashboard_queries.py": "Prometheus, promtool, helm and Triton",
    "tests/integration/test_argocd_health.py": "the argocd CLI",
    "tests/integration/test_gitops_argocd.py": "Argo CD (argocd, Redis) and the operator",
    "tests/integration/test_loader_s3.py": "MinIO",
    "tests/integration/test_triton_digits.py": "Triton",
    "tests/integration/test_localcluster.py": "the local cluster tool",
    "tests/integration/test_triton_p99.py": "Triton and Prometheus",
    "tests/integration/test_triton_hardening.py": "Triton",
    "tests/integration/test_admission_policy.py": "helm and the API server's admission policies",
    "tests/integration/test_loader_hardening.py": "real HTTP(S) servers, MinIO and helm",
    "tests/unit/test_networkpolicy.py": "helm",
    "tests/unit/test_chart_admission_policy.py": "helm",
    "tests/e2e/test_triton_hardening.py": "the real node, Triton and kube-router",
    "tests/integration/test_ownership.py": "helm (the chart's RBAC) and the Gateway API CRDs",
    "tests/e2e/test_two_clusters.py": "two real nodes",
    "tests/e2e/test_rollout_availability.py": "the real node, MinIO and Triton",
    "tests/e2e/test_real_node.py": "the real node",
    "tests/e2e/test_serving.py": "the real node, MinIO and Triton",
    "tests/e2e/test_canary.py": "the real node, MinIO and Triton",
    "tests/e2e/test_autoscaling.py": "the real node, MinIO and Triton",
    "tests/e2e/test_torchscript.py": "the real node, MinIO, Triton and the converter image",
    "tests/e2e/test_secrets_never_leak.py": "the real node, MinIO (with its STS) and Triton",
    "tests/integration/test_artifact_store.py": "MinIO",
    "tests/integration/test_cacheagent.py": "MinIO",
    "tests/unit/test_cacheagent_chart.py": "helm",
    "tests/e2e/test_built_revisions.py": "the real node, MinIO, Triton and the chart's artifact store",
    "tests/e2e/test_built_revisions_pvc.py": "the real node, a PersistentVolume and Triton",
    "tests/e2e/test_built_revisions_faults.py": "the real node, MinIO (stopped and started), Triton and the chart's "
                                                "artifact store",
    "tests/e2e/test_node_cache.py": "the real node, MinIO, Triton and the chart's node cache agent",
    "tests/unit/test_node_cache_wiring.py": "helm",
    "tests/integration/test_leader_election.py": "the API server, the chart's Lease Role",
    "tests/integration/test_stale_cache.py": "the API server's resourceVersion preconditions",
    "tests/e2e/test_scale_to_zero.py": "the real node, MinIO, Triton and the chart's activator",
    "tests/unit/test_scale_to_zero_operator.py": "helm",
}

SUMMARY_ENV = "MD_CI_GUARD_SUMMARY"
MUST_RUN_INI = "ci_guard_must_run"
_STATE = pytest.StashKey["_State"]()


def ci_enabled(environ: Mapping[str, str]) -> bool:
    """Whether this is a CI run: CI=true, 1 or yes (any case), as CI services set it."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@dataclass
class _State:
    enabled: bool
    ran: Counter[Path] = field(default_factory=Counter)  # test module -> tests that ran (not skipped)
    deselected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(MUST_RUN_INI, "test modules (relative to the rootdir) that must run under CI",
                  type="linelist", default=list(MUST_RUN))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = _State(enabled=ci_enabled(os.environ))


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Count tests that ran (a skip in the test's body is not a run); under CI, report a skip as a failure."""
    rep = yield
    state = item.config.stash[_STATE]
    skipped = rep.skipped and not hasattr(rep, "wasxfail")
    if rep.when == "call" and not skipped:
        state.ran[item.path] += 1
    if state.enabled and skipped:
        rep.outcome = "failed"
        rep.longrepr = (f"{item.nodeid} was skipped, and CI forbids skips (CI={os.environ.get('CI')}): "
                        f"{_skip_reason(rep.longrepr)}\nInstall what it needs (`make test` does) or fix the test.")
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                                         pytest.CollectReport]:
    """Under CI, a module skipped as a whole (`skip(allow_module_level=True)`, `importorskip`) fails."""
    rep = yield
    if collector.config.stash[_STATE].enabled and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = (f"{rep.nodeid or collector.name} was skipped at collection, and CI forbids skips: "
                        f"{_skip_reason(rep.longrepr)}")
    return rep


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    if items:
        items[0].config.stash[_STATE].deselected.extend(i.nodeid for i in items)


def _scope(config: pytest.Config) -> list[Path]:
    """The files and directories the command line asked for (testpaths when it named none)."""
    base = config.invocation_params.dir
    return [(base / arg.split("::")[0]).resolve() for arg in config.args]


def _covers(scope: Iterable[Path], path: Path) -> bool:
    return any(a == path or a in path.parents for a in scope)


def _test_files(config: pytest.Config, directory: Path) -> list[Path]:
    """Test modules pytest would collect under `directory` (python_files, minus norecursedirs)."""
    skip_dirs = config.getini("norecursedirs")
    found: set[Path] = set()
    for pattern in config.getini("python_files"):
        for path in directory.rglob(pattern):
            parts = path.relative_to(directory).parts[:-1]
            if not any(fnmatch.fnmatch(part, d) for part in parts for d in (*skip_dirs, "__pycache__")):
                found.add(path.resolve())
    return sorted(found)


def problems(config: pytest.Config, ran: Mapping[Path, int], deselected: Sequence[str]) -> list[str]:
    """What makes this session's run incomplete for CI (empty when nothing is missing)."""
    root = config.rootpath.resolve()
    scope = _scope(config)
    ran_at = Counter({p.resolve(): n for p, n in ran.items()})
    out: list[str] = []
    if deselected:
        out.append(f"{len(deselected)} test(s) deselected (-k, -m or --deselect), CI runs them all: "
                   + ", ".join(deselected[:5]) + (" ..." if len(deselected) > 5 else ""))
    must_run = {str(m): MUST_RUN.get(str(m), "a real part") for m in config.getini(MUST_RUN_INI)}
    for tier in TIERS:
        tier_dir = root / tier
        if _covers(scope, tier_dir) and not any(tier_dir in p.parents for p in ran_at):
            out.append(f"{tier}: no test ran (the whole tier was skipped, deselected or not collected)")
        for path in _test_files(config, tier_dir) if tier_dir.is_dir() else []:
            rel = path.relative_to(root).as_posix()
            if _covers(scope, path) and not ran_at[path] and rel not in must_run:
                out.append(f"{rel}: no test ran")
    for rel, needs in must_run.items():
        path = root / rel
        if not _covers(scope, path):
            continue
        if not path.is_file():
            out.append(f"{rel}: must run under CI (it needs {needs}) but does not exist "
                       f"(renamed? update MUST_RUN in tests/support/ci_guard.py)")
        elif not ran_at[path.resolve()]:
            out.append(f"{rel}: no test ran, and it must under CI (it needs {needs})")
    return out


def _write_summary(config: pytest.Config, state: _State, exitstatus: int) -> None:
    target = os.environ.get(SUMMARY_ENV)
    if not target:
        return
    root = config.rootpath.resolve()
    ran = {}
    for path, n in state.ran.items():
        p = path.resolve()
        ran[p.relative_to(root).as_posix() if root in p.parents else str(p)] = n
    line = {"args": list(config.invocation_params.args), "exitstatus": int(exitstatus),
            "ok": not state.problems and int(exitstatus) == 0, "problems": state.problems, "ran": ran}
    with open(target, "a") as f:
        f.write(json.dumps(line) + "\n")


def _checking(config: pytest.Config) -> bool:
    opt = config.option
    return not (getattr(opt, "collectonly", False) or getattr(opt, "showfixtures", False)
                or getattr(opt, "show_fixtures_per_test", False))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, fail a session that ran less than it was asked to, and record it for .ci/run."""
    state = session.config.stash[_STATE]
    if not state.enabled or not _checking(session.config):
        return
    state.problems = problems(session.config, state.ran, state.deselected)
    if state.problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _write_summary(session.config, state, session.exitstatus)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if state.problems:
        terminalreporter.section("CI guard: this run tested less than CI requires", sep="=", red=True, bold=True)
        for line in state.problems:
            terminalreporter.line(f"  {line}", red=True)
        # Counted as an error, so the last line is red and says so rather than only "N passed".
        report = pytest.CollectReport("ci-guard", "failed", f"{len(state.problems)} problem(s), listed above", [])
        terminalreporter.stats.setdefault("error", []).append(report)


def verify(lines: Iterable[str], tiers: Sequence[str] = TIERS, must_run: Iterable[str] = MUST_RUN) -> list[str]:
    """Across the sessions a CI run recorded: each was complete, and together they ran every tier
    and every must-run module. No line at all means the guard never ran, which fails too."""
    sessions = [json.loads(line) for line in lines if line.strip()]
    if not sessions:
        return ["no pytest session recorded a summary: the CI guard (tests/support/ci_guard.py) did not run"]
    out = [f"pytest {' '.join(s['args'])}: exit {s['exitstatus']}; " + "; ".join(s["problems"])
           for s in sessions if not s["ok"]]
    ran: Counter[str] = Counter()
    for s in sessions:
        ran.update(s["ran"])
    out += [f"{tier}: no test ran in any session" for tier in tiers
            if not any(path.startswith(tier.rstrip("/") + "/") for path in ran)]
    out += [f"{rel}: no test ran in any session, and it must under CI" for rel in must_run if not ran[rel]]
    return out


def main(argv: Sequence[str]) -> int:
    """`python -m tests.support.ci_guard verify SUMMARY`: exit 1, saying why, unless CI ran everything."""
    if len(argv) != 2 or argv[0] != "verify":
        print("usage: python -m tests.support.ci_guard verify SUMMARY_FILE", file=sys.stderr)
        return 2
    try:
        text = Path(argv[1]).read_text()
    except FileNotFoundError:
        text = ""
    found = verify(text.splitlines())
    for line in found:
        print(f"CI guard: {line}", file=sys.stderr)
    if not found:
        print(f"CI guard: every tier and every must-run module ran ({argv[1]})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
