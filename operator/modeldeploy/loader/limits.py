"""The download limit: at most MD_MAX_DOWNLOAD_BYTES bytes per loader run, counted as they arrive.

The operator sets the limit from its own setting (the chart's `maxDownloadBytes`), lowered per
model by `spec.model.source.maxBytes`, and sizes the model repository's emptyDir from it
(docs/loader-contract.md). One budget covers everything one run fetches: the model (every file
of a directory source) and the validation data. A source over the limit is refused before its
bytes are written where the server announces its size, and as soon as the counted bytes pass
the limit where it does not, so an oversized body is never written in full.
"""

from __future__ import annotations

from typing import Final

from .errors import SizeLimitError

ENV: Final = "MD_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 10 * 2**30  # same default as the operator's (config.py)
_WHERE: Final = f"{ENV}: spec.model.source.maxBytes or the operator's maxDownloadBytes"


def human(n: int) -> str:
    """Bytes in binary units for messages: 10 GiB, 1.5 MiB, 512 bytes."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


class ByteBudget:
    """What one run may still fetch. `check` refuses a size that does not fit; `add` records
    bytes once a file is complete (a retried, cut-short attempt is not counted twice)."""

    def __init__(self, cap: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> None:
        if cap < 1:
            raise ValueError(f"download limit must be at least 1 byte, got {cap}")
        self.cap = cap
        self.used = 0

    @property
    def remaining(self) -> int:
        return max(0, self.cap - self.used)

    def error(self, shown: str, detail: str) -> SizeLimitError:
        """The refusal: names the source (without credentials: pass a display() form) and the limit."""
        already = f"; {self.used} bytes were already fetched in this run" if self.used else ""
        return SizeLimitError(
            f"{shown} is larger than the download limit of {human(self.cap)} ({self.cap} bytes, {_WHERE}): "
            f"{detail}{already}"
        )

    def check(self, size: int, shown: str, detail: str) -> None:
        """SizeLimitError unless `size` more bytes fit in what is left."""
        if self.used + size > self.cap:
            raise self.error(shown, detail)

    def add(self, size: int) -> None:
        self.used += size
