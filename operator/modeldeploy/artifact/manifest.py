"""The manifest: what an artifact is, file by file, and the check of a directory against it.

A manifest lists every file of the Triton model directory with its sha256 and size, so a reader
can prove the bytes it is about to serve are the ones that were built, whatever store or cache
they came through. It also records what the operator puts in status: the model file's sha256,
whether the model is quantized and the gate's numbers, the build's duration and time.

Paths are relative, POSIX, inside the model directory: no absolute path, no '.', '..' or empty
segment, no backslash. A checked directory may hold no symbolic link and no special file: Triton
would follow a link wherever it points.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import __version__
from ..loader.checksum import sha256_of
from .errors import ManifestError
from .key import ARTIFACT_FORMAT_VERSION, is_key

MANIFEST_FILE: Final = "manifest.json"
MAX_MANIFEST_BYTES: Final = 4 << 20  # a model directory of tens of thousands of files still fits
MODEL_FILE_CANDIDATES: Final = ("1/model.onnx", "1/model.plan", "1/model.pt", "1/model.savedmodel", "1/model.py")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")  # the loader's rule: it becomes a directory name


@dataclass(frozen=True)
class FileEntry:
    """One file of the model directory."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Gates:
    """The int8 gate's numbers (loader.quantize.QuantizationReport), kept for status."""

    agreement: float
    samples: int
    origin: str
    fp32_seconds: float
    int8_seconds: float
    speedup: float | None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    # what ran both gates: "triton" (the serving image beside the build Job, on the serving device)
    # or "onnxruntime-cpu" (the builder's own CPU; every build before timedBy existed)
    timed_by: str = "onnxruntime-cpu"

    @classmethod
    def from_report(cls, report: Any) -> Gates:
        """From a QuantizationReport (typed loosely so this module never imports numpy)."""
        speedup = float(report.speedup)
        return cls(
            agreement=float(report.agreement),
            samples=int(report.samples),
            origin=str(report.origin),
            fp32_seconds=float(report.fp32_seconds),
            int8_seconds=float(report.int8_seconds),
            speedup=speedup if math.isfinite(speedup) else None,
            fp32_accuracy=None if report.fp32_accuracy is None else float(report.fp32_accuracy),
            int8_accuracy=None if report.int8_accuracy is None else float(report.int8_accuracy),
            timed_by=str(report.timed_by),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agreement": round(self.agreement, 6), "samples": self.samples, "origin": self.origin,
            "fp32Seconds": round(self.fp32_seconds, 9), "int8Seconds": round(self.int8_seconds, 9),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "fp32Accuracy": None if self.fp32_accuracy is None else round(self.fp32_accuracy, 6),
            "int8Accuracy": None if self.int8_accuracy is None else round(self.int8_accuracy, 6),
            "timedBy": self.timed_by,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Gates:
        return cls(
            agreement=float(d["agreement"]), samples=int(d["samples"]), origin=str(d["origin"]),
            fp32_seconds=float(d["fp32Seconds"]), int8_seconds=float(d["int8Seconds"]),
            speedup=None if d.get("speedup") is None else float(d["speedup"]),
            fp32_accuracy=None if d.get("fp32Accuracy") is None else float(d["fp32Accuracy"]),
            int8_accuracy=None if d.get("int8Accuracy") is None else float(d["int8Accuracy"]),
            timed_by=str(d.get("timedBy") or "onnxruntime-cpu"),
        )


@dataclass(frozen=True)
class Manifest:
    """One artifact: its key, its files and the build's facts."""

    key: str
    model_name: str
    files: Mapping[str, FileEntry]
    model_file: str | None  # the file whose sha256 status shows (1/model.onnx, 1/model.py ...)
    quantized: bool = False
    gates: Gates | None = None
    build_seconds: float = 0.0
    built_at: str = ""  # RFC 3339, UTC
    format_version: int = ARTIFACT_FORMAT_VERSION
    loader_version: str = __version__
    key_inputs: Mapping[str, Any] = field(default_factory=dict)
    tools: Mapping[str, str] = field(default_factory=dict)  # library versions of the build image
    tuning: Mapping[str, Any] | None = None  # deploy-time tuning: choice, default vs chosen, every candidate

    @property
    def model_sha256(self) -> str | None:
        return self.files[self.model_file].sha256 if self.model_file else None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> bytes:
        """Stable JSON (sorted keys): equal manifests are equal bytes."""
        doc = {
            "formatVersion": self.format_version,
            "key": self.key,
            "loaderVersion": self.loader_version,
            "modelName": self.model_name,
            "modelFile": self.model_file,
            "modelSha256": self.model_sha256,
            "quantized": self.quantized,
            "gates": None if self.gates is None else self.gates.to_json(),
            "buildSeconds": round(self.build_seconds, 3),
            "builtAt": self.built_at,
            "keyInputs": dict(self.key_inputs),
            "tools": dict(self.tools),
            "files": {p: {"sha256": f.sha256, "size": f.size} for p, f in sorted(self.files.items())},
        }
        if self.tuning is not None:  # only then: manifests of untuned builds keep their bytes
            doc["tuning"] = dict(self.tuning)
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; ManifestError (an ArtifactCorrupt) says what is wrong."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            version = doc["formatVersion"]
            if version != ARTIFACT_FORMAT_VERSION:
                raise ManifestError(f"manifest format {version!r} is not {ARTIFACT_FORMAT_VERSION} (built by "
                                    f"modeldeploy {doc.get('loaderVersion')!r}): rebuild it")
            files = {str(p): FileEntry(sha256=str(f["sha256"]), size=int(f["size"])) for p, f in doc["files"].items()}
            gates = doc.get("gates")
            manifest = cls(
                key=str(doc["key"]),
                model_name=str(doc["modelName"]),
                files=files,
                model_file=None if doc.get("modelFile") is None else str(doc["modelFile"]),
                quantized=bool(doc.get("quantized", False)),
                gates=None if gates is None else Gates.from_json(gates),
                build_seconds=float(doc.get("buildSeconds", 0.0)),
                built_at=str(doc.get("builtAt", "")),
                format_version=int(version),
                loader_version=str(doc.get("loaderVersion", "")),
                key_inputs=dict(doc.get("keyInputs") or {}),
                tools={str(k): str(v) for k, v in (doc.get("tools") or {}).items()},
                tuning=_tuning(doc.get("tuning")),
            )
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ManifestError(f"manifest is not valid: {e.__class__.__name__}: {e}") from None
        if problems := manifest.problems():
            raise ManifestError(f"manifest is not valid: {problems[0]}")
        declared = doc.get("modelSha256")
        if declared is not None and declared != manifest.model_sha256:
            raise ManifestError("manifest is not valid: modelSha256 is not the sha256 of modelFile")
        return manifest

    def problems(self) -> list[str]:
        """What makes this manifest unusable (bad key, paths or digests); empty when none."""
        out = [] if is_key(self.key) else [f"key {self.key!r} is not an artifact key"]
        if not MODEL_NAME.match(self.model_name) or self.model_name in (".", ".."):
            out.append(f"modelName {self.model_name!r} is not a Triton model name")
        if not self.files:
            out.append("it lists no files")
        for path, f in sorted(self.files.items()):
            if reason := path_problem(path):
                out.append(f"{path!r}: {reason}")
            if not _SHA256.match(f.sha256):
                out.append(f"{path}: sha256 is not 64 lowercase hex digits")
            if f.size < 0:
                out.append(f"{path}: negative size")
        if self.model_file is not None and self.model_file not in self.files:
            out.append(f"modelFile {self.model_file!r} is not one of its files")
        return out


def _tuning(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("tuning is not a JSON object")
    return raw


def path_problem(rel: str) -> str | None:
    """Why `rel` may not name a file inside a model directory, or None when it may."""
    if not rel or len(rel) > 1024:
        return "empty or too long"
    if rel.startswith("/"):
        return "absolute path"
    if "\\" in rel or "\x00" in rel or any(ord(c) < 32 for c in rel):
        return "backslash or control character"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "empty, '.' or '..' segment"
    return None


def scan(model_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files under `model_dir` by relative path, and what may not be there (links,
    special files). Links are never followed."""
    files: dict[str, Path] = {}
    bad: list[str] = []
    for root, dirs, names in os.walk(model_dir, followlinks=False):
        base = Path(root)
        for name in sorted([*dirs, *names]):
            path = base / name
            rel = path.relative_to(model_dir).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                bad.append(f"{rel}: is a symbolic link")
            elif stat.S_ISREG(mode):
                files[rel] = path
            elif not stat.S_ISDIR(mode):
                bad.append(f"{rel}: is not a regular file")
        dirs[:] = [d for d in dirs if not os.path.islink(base / d)]
    return files, bad


def model_file_of(paths: Mapping[str, Any]) -> str | None:
    """The file whose sha256 status reports: the model itself, not its config."""
    return next((p for p in MODEL_FILE_CANDIDATES if p in paths), None)


def manifest_for(
    model_dir: Path,
    *,
    key: str,
    model_name: str,
    key_inputs: Mapping[str, Any] | None = None,
    gates: Gates | None = None,
    quantized: bool = False,
    build_seconds: float = 0.0,
    built_at: str = "",
    tools: Mapping[str, str] | None = None,
    tuning: Mapping[str, Any] | None = None,
) -> Manifest:
    """The manifest of a finished model directory; ManifestError if it holds a link or special file."""
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise ManifestError(f"{model_dir} is not a directory")
    found, bad = scan(model_dir)
    if bad:
        raise ManifestError(f"model directory cannot be an artifact: {bad[0]}")
    files = {rel: FileEntry(sha256=sha256_of(p), size=p.stat().st_size) for rel, p in sorted(found.items())}
    manifest = Manifest(
        key=key, model_name=model_name, files=files, model_file=model_file_of(files), quantized=quantized,
        gates=gates, build_seconds=build_seconds, built_at=built_at, key_inputs=dict(key_inputs or {}),
        tools=dict(tools or {}), tuning=None if tuning is None else dict(tuning),
    )
    if problems := manifest.problems():
        raise ManifestError(f"model directory cannot be an artifact: {problems[0]}")
    return manifest


def short(digest: str) -> str:
    """A sha256 as messages show it (enough to tell two apart)."""
    return digest[:12] + "…" if digest else "(none)"


def verify(model_dir: Path, manifest: Manifest, *, content: bool = True) -> list[str]:
    """Problems of `model_dir` against `manifest`: missing, extra, wrong size or sha256, links,
    special files and manifest paths that may not exist at all. Empty means the directory is
    exactly the artifact. `content=False` skips hashing (for files already hashed on arrival)."""
    problems = [f"manifest: {p}" for p in manifest.problems()]
    if model_dir.is_symlink() or not model_dir.is_dir():
        return [*problems, f"{model_dir.name}: model directory is missing or not a directory"]
    found, bad = scan(model_dir)
    problems += bad
    for rel in sorted(set(found) - set(manifest.files)):
        problems.append(f"{rel}: not in the manifest")
    for rel, want in sorted(manifest.files.items()):
        path = found.get(rel)
        if path is None:
            if path_problem(rel) is None and not any(p.startswith(f"{rel}:") for p in bad):
                problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != want.size:
            problems.append(f"{rel}: size {size}, manifest says {want.size}")
        elif content and (got := sha256_of(path)) != want.sha256:
            problems.append(f"{rel}: sha256 mismatch (manifest {short(want.sha256)}, file {short(got)})")
    return problems
