"""Argo CD for real, as local processes: Redis, the repo server and the application controller.

The components are the one multi-call `argocd` binary built by hack/build-argocd.sh; Argo CD picks
the component from argv[0] or, as its own Procfile does for local development, from
$ARGOCD_BINARY_NAME. They run out-of-cluster like Argo CD's `make start-local`: the controller
talks to the cluster with a kubeconfig and ARGOCD_FAKE_IN_CLUSTER=true (so the in-cluster
destination https://kubernetes.default.svc means that kubeconfig's cluster), the repo server
serves plain gRPC (--disable-tls / --repo-server-plaintext), and Redis is Debian's redis-server.
Git is a local bare repository read through a file:// URL.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster import config, process
from tests.support.cluster import ClusterHandle, wait_for

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "hack" / "versions" / "argocd").read_text().strip()
NAMESPACE = "argocd"
HEALTH_SNIPPET = ROOT / "docs" / "argocd-health.yaml"
IN_CLUSTER = "https://kubernetes.default.svc"


def argocd_binary() -> Path:
    """The argocd binary of VERSION, built by hack/build-argocd.sh when not cached (20-40 min cold)."""
    exe = config.cache_dir() / "bin" / f"argocd-{VERSION}"
    if not os.access(exe, os.X_OK):
        env = dict(os.environ, MD_CACHE=str(config.cache_dir()), ARGOCD_VERSION=VERSION)
        subprocess.run([str(ROOT / "hack" / "build-argocd.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
    return exe


def module_source() -> Path:
    """The Argo CD module source in the Go module cache (downloaded by hack/build-argocd.sh)."""
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    base = Path(gomodcache or Path.home() / "go" / "pkg" / "mod")
    return base / "github.com" / "argoproj" / "argo-cd" / f"v3@{VERSION}"


def crd_dir() -> Path:
    """manifests/crds/ of the module source: the Application and AppProject CRDs of VERSION."""
    return module_source() / "manifests" / "crds"


def helper_scripts(dest: Path) -> Path:
    """The shell helpers Argo CD's image puts on PATH (its Dockerfile copies them from hack/).

    The repo server runs `git-verify-wrapper.sh REVISION` for every manifest generation (the
    deprecated commit-signature path, even with ARGOCD_GPG_ENABLED=false) and fails with a bare
    "permission denied" when the script is not on PATH."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("git-verify-wrapper.sh", "gpg-wrapper.sh"):
        src = module_source() / "hack" / name
        if src.exists():
            (dest / name).write_bytes(src.read_bytes())
            (dest / name).chmod(0o755)
    return dest


# ---------------------------------------------------------------------------------------------
# Git


class GitRepo:
    """A bare repository (the "remote" Argo CD reads, via file://) plus a work tree to commit from."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "models.git"
        self.work = root / "work"
        self.branch = branch
        root.mkdir(parents=True, exist_ok=True)
        self._git(root, "init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare))
        self._git(root, "clone", "--quiet", str(self.bare), str(self.work))
        self._git(self.work, "checkout", "--quiet", "-B", branch)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    @staticmethod
    def _git(cwd: Path, *args: str) -> str:
        env = dict(os.environ, GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
                   GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid",
                   GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout.strip()

    def commit(self, files: dict[str, dict[str, Any]], message: str) -> str:
        """Write each manifest as YAML, commit and push; returns the new commit's SHA."""
        for rel, obj in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
        self._git(self.work, "add", "-A")
        self._git(self.work, "commit", "--quiet", "-m", message)
        self._git(self.work, "push", "--quiet", "origin", self.branch)
        return self._git(self.work, "rev-parse", "HEAD")


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Component:
    """One local process with its output in a log file; stop() ends its process group."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        env = dict(os.environ, **self.env)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()

    def check_running(self) -> None:
        """Fail with the log's tail if the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"{self.name} exited ({rc}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _wait_port(comp: Component, port: int, timeout: float = 60) -> None:
    def up() -> bool:
        comp.check_running()
        return process.port_open(port)

    wait_for(up, timeout, message=f"{comp.name} listening on 127.0.0.1:{port}")


@dataclass
class ArgoCD:
    """Redis + argocd-repo-server + argocd-application-controller, running locally."""

    kubeconfig: Path
    workdir: Path
    log_dir: Path
    app_resync_seconds: int = 5
    components: list[Component] = field(default_factory=list)

    def start(self) -> None:
        exe = str(argocd_binary())
        shutil.rmtree(self.log_dir, ignore_errors=True)  # this session's logs only
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("redis", "tmp", "tls", "ssh", "gnupg", "gpg-source", "home"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        redis_port, repo_port = process.free_port(), process.free_port()
        common = {"ARGOCD_TLS_DATA_PATH": str(self.workdir / "tls"),
                  "ARGOCD_SSH_DATA_PATH": str(self.workdir / "ssh"),
                  "ARGOCD_GNUPGHOME": str(self.workdir / "gnupg"),
                  "ARGOCD_GPG_DATA_PATH": str(self.workdir / "gpg-source"),
                  "ARGOCD_GPG_ENABLED": "false", "TMPDIR": str(self.workdir / "tmp"),
                  # not the fixed /tmp/reposerver-ask-pass.sock, which another repo server may hold
                  "ARGOCD_ASK_PASS_SOCK": str(self.workdir / "ask-pass.sock"),
                  "HOME": str(self.workdir / "home"), "GIT_CONFIG_NOSYSTEM": "1"}

        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server missing (Debian package redis-server; hack/setup-system.sh)"
        redis = Component("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", str(self.workdir / "redis"),
                                    "--protected-mode", "no"],
                          self.log_dir / "redis.log")
        self._launch(redis, redis_port)

        repo = Component("argocd-repo-server", [
            exe, "--address", "127.0.0.1", "--port", str(repo_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(process.free_port()),
            "--disable-tls", "--client-ca-path=", "--redis", f"127.0.0.1:{redis_port}",
            # resolve HEAD/branches with a fresh ls-remote instead of a 3-minute cached answer
            "--revision-cache-expiration", "1s",
            "--logformat", "text", "--loglevel", "info"],
            self.log_dir / "argocd-repo-server.log",
            env={**common, "ARGOCD_BINARY_NAME": "argocd-repo-server",
                 "PATH": f"{helper_scripts(self.workdir / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}"})
        self._launch(repo, repo_port)

        metrics_port = process.free_port()
        controller = Component("argocd-application-controller", [
            exe, "--kubeconfig", str(self.kubeconfig), "--namespace", NAMESPACE,
            "--repo-server", f"127.0.0.1:{repo_port}", "--repo-server-plaintext",
            "--redis", f"127.0.0.1:{redis_port}", "--metrics-port", str(metrics_port),
            "--app-resync", str(self.app_resync_seconds), "--app-resync-jitter", "0",
            "--self-heal-timeout-seconds", "2",
            # each resource's health (status and the health check's message) in the Application's
            # status.resources, as Argo CD 2 did; Argo CD 3 keeps it only in Redis otherwise
            "--persist-resource-health",
            "--logformat", "text", "--loglevel", "info"],
            self.log_dir / "argocd-application-controller.log",
            env={**common, "ARGOCD_BINARY_NAME": "argocd-application-controller",
                 "ARGOCD_FAKE_IN_CLUSTER": "true", "KUBECONFIG": str(self.kubeconfig),
                 "HOSTNAME": "argocd-application-controller-0"})
        self._launch(controller, metrics_port)

    def _launch(self, comp: Component, port: int) -> None:
        comp.start()
        self.components.append(comp)
        _wait_port(comp, port)

    def check_running(self) -> None:
        for comp in self.components:
            comp.check_running()

    def stop(self) -> None:
        for comp in reversed(self.components):
            comp.stop()
        self.components.clear()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {c.name} ({c.log_path}) ---\n{c.log_tail(lines)}" for c in self.components)


# ---------------------------------------------------------------------------------------------
# Cluster objects


def install(tc: ClusterHandle, reconciliation: str = "5s") -> None:
    """The argocd namespace, Argo CD's CRDs, argocd-cm (with modeldeploy's health check),
    argocd-rbac-cm, argocd-secret and the default AppProject."""
    if tc.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        tc.kubectl("create", "namespace", NAMESPACE)
    crds = crd_dir()
    for name in ("application-crd.yaml", "appproject-crd.yaml"):
        tc.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds / name))
    for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
        # polled: `kubectl wait` fails at once while the new CRD has no status.conditions yet
        wait_for(lambda crd=crd: tc.kubectl(
            "get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            check=False).stdout == "True", 60, message=f"CRD {crd} Established")

    labels = {"app.kubernetes.io/part-of": "argocd"}
    cm = yaml.safe_load(HEALTH_SNIPPET.read_text())  # the fragment exactly as users merge it
    cm["metadata"]["namespace"] = NAMESPACE
    cm["data"]["timeout.reconciliation"] = reconciliation
    tc.apply([
        cm,
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "argocd-rbac-cm", "namespace": NAMESPACE,
                      "labels": {**labels, "app.kubernetes.io/name": "argocd-rbac-cm"}},
         "data": {"policy.default": "role:readonly"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "argocd-secret", "namespace": NAMESPACE,
                      "labels": {**labels, "app.kubernetes.io/name": "argocd-secret"}},
         "stringData": {"server.secretkey": secrets.token_urlsafe(32)}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
         "metadata": {"name": "default", "namespace": NAMESPACE},
         "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                  "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}},
    ])


def application(name: str, repo_url: str, path: str, dest_namespace: str,
                revision: str = "main") -> dict[str, Any]:
    """An Application syncing `path` of the repo into `dest_namespace`, automated with self-heal."""
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"project": "default",
                     "source": {"repoURL": repo_url, "path": path, "targetRevision": revision},
                     "destination": {"server": IN_CLUSTER, "namespace": dest_namespace},
                     "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}}


def get_application(tc: ClusterHandle, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", "application", name, "-n", NAMESPACE)


def refresh(tc: ClusterHandle, name: str) -> None:
    """What a Git webhook or `argocd app get --refresh` does: ask for a refresh now."""
    tc.kubectl("annotate", "application", name, "-n", NAMESPACE, "--overwrite",
               "argocd.argoproj.io/refresh=normal")
