"""Scrape many Triton pods at once; a pod that does not answer is missing data, not zero load."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .parse import TritonMetrics, parse

log = logging.getLogger(__name__)

_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="scrape")


def scrape_one(url: str, model: str, timeout: float = 1.0) -> TritonMetrics | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse(resp.read().decode(), model)
    except (OSError, ValueError) as e:
        log.debug("scrape of %s failed: %s", url, e)
        return None


def scrape(urls: Iterable[str], model: str, timeout: float = 1.0) -> dict[str, TritonMetrics | None]:
    """All pods concurrently, each bounded by `timeout`: one slow pod never delays a decision."""
    urls = list(urls)
    results = _POOL.map(lambda u: scrape_one(u, model, timeout), urls)
    return dict(zip(urls, results, strict=True))
