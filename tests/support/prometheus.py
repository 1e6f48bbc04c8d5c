"""A real /usr/bin/prometheus (Debian's package) for tests: own config, TSDB and log, loopback port.

The same pattern as tests/integration/test_prometheus_source.py, with the scrape jobs given by the
caller, plus the HTTP API calls the tests need (instant queries, target health) and promtool.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PROMETHEUS = Path("/usr/bin/prometheus")  # Debian's package (hack/setup-system.sh)
PROMTOOL = Path("/usr/bin/promtool")  # shipped with it

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


@dataclass
class Prometheus:
    """A real Prometheus process; `start` takes the scrape_configs entries as YAML text."""

    work: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The tail of Prometheus' own log."""
        path = self.work / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self, scrape_configs: str, scrape_interval: str = "1s") -> None:
        """Run with these scrape jobs (a YAML list, indented two spaces; empty for none) and wait until ready."""
        config = self.work / "prometheus.yml"
        config.write_text(f"global: {{scrape_interval: {scrape_interval}, scrape_timeout: {scrape_interval}, "
                          "evaluation_interval: 1m}\n"
                          f"scrape_configs:{' []' if not scrape_configs.strip() else ''}\n{scrape_configs}")
        argv = [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={self.work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        with open(self.work / "prometheus.log", "ab") as logf:
            self.process = proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    return True if r.status == 200 else None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None

        wait_for(ready, 30, "prometheus ready")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it lingers."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def api(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET /api/v1/<path>; Prometheus' JSON answer, errors (HTTP 400/422) included."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def query(self, promql: str) -> dict[str, Any]:
        """An instant query, as Grafana and the rule evaluator send it."""
        return self.api("query", {"query": promql})

    def target_health(self) -> dict[str, str]:
        """{job: health} of the active targets ("up", "down", "unknown")."""
        targets = self.api("targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}


def promtool_check_rules(rules_file: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules FILE`: exit 0 when the file is a valid Prometheus rules file."""
    return subprocess.run([str(PROMTOOL), "check", "rules", str(rules_file)], text=True, capture_output=True,
                          timeout=60)
