"""Host clean-up for the real node: mounts, cgroups and stray processes, found by what they name.

A killed kubelet or containerd leaves mounts (pod volumes, netns files, container rootfs) and
cgroups behind; deleting the cluster directory with them still mounted would delete through the
mounts. Everything here is scoped to paths the cluster owns, never a broad name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")


def _unescape(field: str) -> str:
    """Undo /proc/self/mountinfo's octal escapes (space, tab, newline, backslash)."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (the order to unmount them in)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = _unescape(line.split()[4])
        if target == prefix[:-1] or target.startswith(prefix):
            found.append(Path(target))
    return sorted(set(found), key=lambda p: (-len(p.parts), str(p)))


def unmount_all(root: Path) -> list[Path]:
    """Unmount everything below `root` (lazily where busy); return what is still mounted."""
    for _ in range(5):
        targets = mounts_under(root)
        if not targets:
            return []
        for target in targets:
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
    return mounts_under(root)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def pids_naming(token: str) -> list[int]:
    """Processes whose command line contains the argument `token` (e.g. our containerd socket)."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and any(token in a for a in cmdline(int(entry.name))):
            out.append(int(entry.name))
    return out


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGKILL the given processes and wait until they are gone (or `timeout`)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _not_zombie(p) for p in pids):
        time.sleep(0.05)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cgroup_hierarchies(include_unified: bool = False) -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, ..., name=systemd), and on request the
    hybrid setup's v2 'unified' one (runc creates container cgroups there too)."""
    if not CGROUP_V1.is_dir():
        return []
    return sorted(p for p in CGROUP_V1.iterdir()
                  if p.is_dir() and not p.is_symlink() and (include_unified or p.name != "unified")
                  and (p / "cgroup.procs").exists())


def ensure_cgroup(name: str) -> None:
    """Create cgroup `/name` in every v1 hierarchy (the kubelet requires its cgroupRoot to exist)."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())


def remove_cgroup(name: str, timeout: float = 10.0) -> list[Path]:
    """Kill every process in cgroup `/name` (all hierarchies), remove it; return what remains."""
    deadline = time.monotonic() + timeout
    left: list[Path] = []
    for hierarchy in cgroup_hierarchies(include_unified=True):
        top = hierarchy / name
        if not top.exists():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in dirs:
            while time.monotonic() < deadline:
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except FileNotFoundError:
                    break
                if not pids:
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # EBUSY while the kernel finishes tearing tasks down
                        time.sleep(0.1)
                        continue
                kill_pids(pids, timeout=1.0)
            if d.exists():
                left.append(d)
    return left
