"""A pass counts its own writes, not those another worker or the election sent meanwhile."""

from __future__ import annotations

import threading

from modeldeploy.kube.client import WriteCounter


def test_each_thread_sees_only_its_own_writes() -> None:
    seen: list[str] = []
    counter = WriteCounter(on_write=seen.append)
    counter.add("apply")
    other_done = threading.Event()

    def other() -> None:
        for _ in range(5):
            counter.add("update")  # a Lease renewal, another pass
        other_done.set()

    before = counter.of_this_thread()
    threading.Thread(target=other).start()
    assert other_done.wait(5)
    counter.add("patch_status")
    assert counter.of_this_thread() - before == 1
    assert counter.by_verb == {"apply": 1, "update": 5, "patch_status": 1}
    assert len(seen) == 7
