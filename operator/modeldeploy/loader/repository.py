"""The model repository on disk, written atomically.

Everything is built in a hidden staging directory inside the repository (same filesystem, and
the pod's /tmp is small) and renamed into place at the end, so a failed or killed loader never
leaves a half-written model for Triton to trip over. Leftovers of a killed run are removed first.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Final

STAGING_PREFIX: Final = ".modeldeploy-"
VERSION_DIR: Final = "1"  # Triton's version directory: one model, one version per pod
RUNNER_SOURCE: Final = "onnx_runner_model.py"
_HEADER: Final = '''# Written by modeldeploy's model-loader. Triton's python backend stub runs Python in isolated
# mode (PYTHONPATH is ignored), so the runner's packages are put on sys.path here.
import sys

for _entry in reversed({paths!r}):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

'''


class Staging:
    """A staging area for one model: `model_dir` becomes `<repository>/<name>` on commit()."""

    def __init__(self, repository: Path, model_name: str) -> None:
        self.repository = repository
        self.final = repository / model_name
        repository.mkdir(parents=True, exist_ok=True)
        for stale in repository.glob(f"{STAGING_PREFIX}*"):  # a previous run that was killed
            shutil.rmtree(stale, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}stage-", dir=repository))
        self.work = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}work-", dir=repository))
        self.model_dir = self.root / model_name
        self.version_dir = self.model_dir / VERSION_DIR
        self.version_dir.mkdir(parents=True)

    def commit(self) -> Path:
        """Move the finished model into place, replacing an older one (an init container re-run)."""
        old = None
        if self.final.exists():
            old = self.repository / f"{STAGING_PREFIX}old-{uuid.uuid4().hex[:8]}"
            self.final.rename(old)
        self.model_dir.rename(self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def close(self) -> None:
        """Remove staging and work directories (after commit they hold only scratch files)."""
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def with_sys_path(source: str, sys_path: tuple[str, ...]) -> str:
    """model.py source behind a header that puts `sys_path` first (nothing when it is empty)."""
    return (_HEADER.format(paths=list(sys_path)) if sys_path else "") + source


def runner_source(sys_path: tuple[str, ...]) -> str:
    """The CPU runner's model.py: an optional sys.path header, then the runner itself."""
    return with_sys_path(resources.files(__package__).joinpath(RUNNER_SOURCE).read_text(encoding="utf-8"), sys_path)
