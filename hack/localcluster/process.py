"""Background processes with pid files: start detached, check, stop the whole process group."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port_block(count: int = 1) -> int:
    """The first of `count` consecutive TCP ports nobody listens on, below the ephemeral range: a
    server that binds them again after a restart cannot find one taken by an outgoing connection
    (free_port's come from the ephemeral range; the operator's health port is its metrics port + 1,
    and a restarted test operator once failed with 'address already in use' on it)."""
    low, _ = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, min(30000, low) - count)  # 30000-32767: NodePorts
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _pidfile(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def read_pid(run_dir: Path, name: str) -> int | None:
    try:
        return int(_pidfile(run_dir, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running(run_dir: Path, name: str) -> bool:
    return alive(read_pid(run_dir, name))


def cmdline(run_dir: Path, name: str) -> list[str] | None:
    """The argv the recorded process runs with (to restart it when the wanted settings changed)."""
    pid = read_pid(run_dir, name)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except FileNotFoundError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else None


def start(run_dir: Path, log_dir: Path, name: str, argv: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start `argv` detached in its own session, output appended to logs/<name>.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)
    _pidfile(run_dir, name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop(run_dir: Path, name: str, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `timeout`, remove the pid file."""
    pid = read_pid(run_dir, name)
    if alive(pid):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        # The leader may go first: wait for every member of its group, so "stopped" means gone.
        while (alive(pid) or group_members(pid)) and time.monotonic() < deadline + 5:
            _reap(pid)
            time.sleep(0.1)
    _pidfile(run_dir, name).unlink(missing_ok=True)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group a child started with start_new_session=True leads (a server and
    whatever it spawned, e.g. Triton's python-backend stubs), SIGKILL it if it outlives `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/PID/stat after the command name) for every process still there:
    fields[0] is the state, [1] the parent pid, [2] the process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    return [pid for pid, fields in proc_stats() if fields[0] != "Z" and int(fields[2]) == pgid]


def _reap(pid: int) -> None:
    """Collect our own exited child, if it is one, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
