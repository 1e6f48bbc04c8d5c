"""A client load through a Service, as users would send it: what they saw is kept."""

from __future__ import annotations

import threading
import time

import numpy as np


class Load:
    """Closed-loop senders through the Service; every failure is kept (what a client would see).

    Each request opens its own connection, as kube-proxy balances connections, not requests: a
    kept-alive connection stays pinned to one pod and is closed when that pod stops (see
    docs/design.md, "Draining and keep-alive").
    """

    def __init__(self, url: str, senders: int, pause: float) -> None:
        self.url, self.pause = url, pause
        self.began = time.monotonic()
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(senders)]

    def _run(self) -> None:
        import tritonclient.http as httpclient

        x = np.zeros((1, 1, 8, 8), np.float32)
        while not self._stop.is_set():
            try:
                client = httpclient.InferenceServerClient(self.url, connection_timeout=5, network_timeout=10)
                inp = httpclient.InferInput("input_0", [1, 1, 8, 8], "FP32")
                inp.set_data_from_numpy(x)
                client.infer("digits", [inp])
                client.close()
                self.ok += 1
            except Exception as e:
                self.failed.append(f"{time.monotonic() - self.began:.1f}s: {str(e)[:200]}")
            if self.pause:
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        self.began = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
