"""A user's own Triton python model (format `python`), copied as it is.

Accepted sources: a directory or a tarball holding either a Triton model directory
(`config.pbtxt` + `1/model.py`) or the files of one version (`model.py` at the top), or a single
`model.py`. Archives are unpacked with every member checked, so an archive cannot write outside
the model directory: absolute names, `..` and every kind of link or special file are refused,
tarfile's "data" filter is applied on top (Python 3.11.4+), and the members may not add up to more
than the download limit nor number more than MAX_MEMBERS. The user's config.pbtxt is kept,
except that its name is set to the model's name (Triton refuses a mismatch); without one, a
config with the serving settings is generated and Triton completes inputs and outputs from
model.py's auto_complete_config.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path
from typing import Final

from .errors import FormatError, SizeLimitError
from .fetch import copy_into
from .limits import DEFAULT_MAX_DOWNLOAD_BYTES, ENV, human
from .repository import VERSION_DIR, with_sys_path

ARCHIVE_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz")
MAX_MEMBERS: Final = 100_000
_FilterError: Final = getattr(tarfile, "FilterError", tarfile.TarError)  # Python 3.11.4+
_NAME_LINE = re.compile(r'^(\s*name\s*:\s*)"[^"\n]*"', re.MULTILINE)


def check_member(m: tarfile.TarInfo) -> None:
    """FormatError unless the member is a file or directory that stays inside the target."""
    if m.name.startswith("/") or ".." in Path(m.name).parts:
        raise FormatError(f"archive member {m.name!r} would land outside the model directory")
    if m.issym() or m.islnk():
        raise FormatError(f"archive member {m.name!r} is a link (to {m.linkname!r}): links are not unpacked")
    if not (m.isfile() or m.isdir()):
        raise FormatError(f"archive member {m.name!r} is not a plain file or directory")


def safe_extract(archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> None:
    """Unpack a tarball into `dest` after checking every member (names, types, total size)."""
    try:
        with tarfile.open(archive) as tar:
            total = 0
            for count, m in enumerate(tar, start=1):  # headers only: nothing is written yet
                if count > MAX_MEMBERS:
                    raise FormatError(f"python model archive has more than {MAX_MEMBERS} members")
                check_member(m)
                total += m.size if m.isfile() else 0
                if total > max_bytes:
                    raise SizeLimitError(f"python model archive unpacks to more than {human(max_bytes)} "
                                         f"({max_bytes} bytes, {ENV}): refusing to unpack it")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.11.4: the checks above are all there is
                tar.extractall(dest)
    except _FilterError as e:
        raise FormatError(f"python model archive member refused: {e}") from None
    except tarfile.TarError as e:
        raise FormatError(f"python model archive is not a readable tarball: {e}") from None


def _unpack(src: Path, work: Path, max_bytes: int) -> Path:
    """A directory holding the user's files: src itself, its unpacked archive, or a dir around model.py."""
    if src.is_dir():
        return src
    if src.name.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(src):
        out = work / "python-model"
        out.mkdir(parents=True)
        safe_extract(src, out, max_bytes)
        entries = [p for p in out.iterdir() if not p.name.startswith(".")]
        return entries[0] if len(entries) == 1 and entries[0].is_dir() else out
    if src.suffix == ".py":
        out = work / "python-model"
        out.mkdir(parents=True)
        shutil.copyfile(src, out / "model.py")
        return out
    raise FormatError("format python needs a directory, a tarball (.tar, .tar.gz, .tgz) or a model.py file")


def install(src: Path, model_dir: Path, work: Path, model_name: str, sys_path: tuple[str, ...] = (),
            max_unpacked_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> str | None:
    """Copy the user's model into `model_dir`; returns their config.pbtxt (renamed) or None.

    `sys_path` (MD_RUNNER_SYS_PATH, unset in the serving images) is put in front of model.py for
    hosts whose stub does not find numpy on its default path, as for the ONNX runner. An archive
    may unpack to at most `max_unpacked_bytes` (the download limit).
    """
    root = _unpack(src, work, max_unpacked_bytes)
    version = model_dir / VERSION_DIR
    shutil.rmtree(version, ignore_errors=True)
    if (root / VERSION_DIR / "model.py").is_file():
        copy_into(root / VERSION_DIR, version)
    elif (root / "model.py").is_file():
        copy_into(root, version)
        (version / "config.pbtxt").unlink(missing_ok=True)
    else:
        raise FormatError("python model has no model.py (expected model.py or 1/model.py at its top)")
    if sys_path:
        entry = version / "model.py"
        entry.write_text(with_sys_path(entry.read_text(encoding="utf-8"), sys_path), encoding="utf-8")
    user_config = root / "config.pbtxt"
    if not user_config.is_file():
        return None
    text = user_config.read_text(encoding="utf-8")
    if _NAME_LINE.search(text):
        return _NAME_LINE.sub(lambda m: f'{m.group(1)}"{model_name}"', text, count=1)
    return f'name: "{model_name}"\n{text}'
