"""The activator's per-model gate and demand throttle (activator/hold.py, demand.py), on a real event loop
with a scripted probe: hold, release all at once, cap, deadline, hold again, demand renewals."""

from __future__ import annotations

import asyncio
import time

import pytest

from modeldeploy.activator.demand import ThrottledDemand
from modeldeploy.activator.hold import Gates, HoldSettings, HoldTimeout, OverCap
from modeldeploy.activator.metrics import ActivatorMetrics
from modeldeploy.activator.routes import Route

ROUTE = Route("ml", "digits", "digits", "127.0.0.1:1", "127.0.0.1:2")
LBL = {"namespace": "ml", "name": "digits"}


class Sink:
    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def signal(self, models: list[tuple[str, str]]) -> None:
        self.calls.append(models)


def _value(metrics: ActivatorMetrics, sample: str, /, **labels: str) -> float:
    return metrics.registry.get_sample_value(sample, labels) or 0.0


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_held_until_the_probe_sees_a_ready_pod_then_released_together() -> None:
    async def main() -> None:
        ready = asyncio.Event()

        async def probe(route: Route) -> bool:
            return ready.is_set()

        metrics, sink = ActivatorMetrics(), Sink()
        demand = ThrottledDemand(sink, metrics, renew_s=60)
        gates = Gates(HoldSettings(max_held=10, timeout_s=5, probe_interval_s=0.01), metrics, probe, demand)
        gate = gates.gate(ROUTE)
        waits = [asyncio.create_task(gate.wait(time.monotonic() + 5)) for _ in range(10)]
        await asyncio.sleep(0.05)
        assert gate.waiting == 10 and not any(w.done() for w in waits)
        assert _value(metrics, "modeldeploy_activator_held_requests", **LBL) == 10
        with pytest.raises(OverCap) as over:  # the 11th: refused at once
            await gate.wait(time.monotonic() + 5)
        assert over.value.status == 429 and over.value.retry_after_s == 2
        assert sink.calls == [[("ml", "digits")]]  # one demand write for ten requests (renewal 60 s)
        ready.set()
        held = await asyncio.gather(*waits)
        assert all(0 < h < 1 for h in held)
        assert _value(metrics, "modeldeploy_activator_held_requests", **LBL) == 0
        assert _value(metrics, "modeldeploy_activator_cold_start_seconds_count", **LBL) == 1
        assert await gate.wait(time.monotonic() + 5) == 0.0  # open: not held
        assert _value(metrics, "modeldeploy_activator_held_total", **LBL) == 10
        gate.close()  # the pods went away: held again, a second cold start
        again = asyncio.create_task(gate.wait(time.monotonic() + 5))
        await asyncio.sleep(0.05)
        assert await again > 0
        assert _value(metrics, "modeldeploy_activator_cold_start_seconds_count", **LBL) == 2
        await gates.aclose()
        await demand.aclose()

    run(main())


def test_deadline_gives_503_and_the_probe_stops_with_nobody_waiting() -> None:
    async def main() -> None:
        probes = 0

        async def probe(route: Route) -> bool:
            nonlocal probes
            probes += 1
            return False

        metrics = ActivatorMetrics()
        demand = ThrottledDemand(None, metrics)
        gates = Gates(HoldSettings(timeout_s=0.2, probe_interval_s=0.01, retry_after_s=5), metrics, probe, demand)
        began = time.monotonic()
        with pytest.raises(HoldTimeout) as e:
            await gates.gate(ROUTE).wait(began + 0.2)
        assert 0.19 <= time.monotonic() - began < 0.5
        assert e.value.status == 503 and e.value.retry_after_s == 5
        assert _value(metrics, "modeldeploy_activator_timed_out_total", **LBL) == 1
        seen = probes
        await asyncio.sleep(0.1)
        assert probes <= seen + 1  # nobody waits: the probe loop ended
        await demand.aclose()

    run(main())


def test_a_probe_that_raises_does_not_strand_requests() -> None:
    async def main() -> None:
        calls = 0

        async def probe(route: Route) -> bool:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise OSError("boom")
            return True

        metrics = ActivatorMetrics()
        demand = ThrottledDemand(None, metrics)
        gates = Gates(HoldSettings(probe_interval_s=0.01), metrics, probe, demand)
        assert await gates.gate(ROUTE).wait(time.monotonic() + 2) > 0
        await demand.aclose()

    run(main())


def test_demand_is_renewed_at_most_once_per_interval_and_retried_after_errors() -> None:
    async def main() -> None:
        now = [0.0]
        failing = [True]

        class FlakySink(Sink):
            def signal(self, models: list[tuple[str, str]]) -> None:
                if failing[0]:
                    failing[0] = False
                    raise ConnectionError("API server away")
                super().signal(models)

        metrics, sink = ActivatorMetrics(), FlakySink()
        demand = ThrottledDemand(sink, metrics, renew_s=5, clock=lambda: now[0])
        other = Route("ml", "other", "other", "h:1", "h:2")
        demand.want(ROUTE)
        await asyncio.sleep(0.05)
        assert sink.calls == [] and _value(metrics, "modeldeploy_activator_demand_signals_total", result="error") == 1
        await asyncio.sleep(0.6)
        demand.want(ROUTE)  # retried (nothing was written yet)
        demand.want(other)
        await asyncio.sleep(0.05)
        assert sorted(m for call in sink.calls for m in call) == [("ml", "digits"), ("ml", "other")]
        n = len(sink.calls)
        now[0] = 4.0
        demand.want(ROUTE)
        await asyncio.sleep(0.05)
        assert len(sink.calls) == n  # within the renewal interval: nothing written
        now[0] = 5.5
        demand.want(ROUTE)
        await asyncio.sleep(0.05)
        assert sink.calls[-1] == [("ml", "digits")]
        await demand.aclose()

    run(main())


def test_a_starting_pod_is_probed_and_forwarded_to_directly_as_soon_as_it_is_ready() -> None:
    """The operator lists the pods that are starting: a held request goes to the first that answers
    ready, without waiting for kube-proxy to put it behind the Service; the Service stays the
    fallback, and pods the operator adds while requests are held are probed from then on."""
    async def main() -> None:
        ready: set[str] = set()
        asked: list[str] = []

        async def probe(route: Route) -> bool:
            asked.append(route.http)
            return route.http in ready

        metrics, sink = ActivatorMetrics(), Sink()
        demand = ThrottledDemand(sink, metrics, renew_s=60)
        gates = Gates(HoldSettings(probe_interval_s=0.01), metrics, probe, demand)
        service = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001")
        gate = gates.gate(service)
        held = asyncio.create_task(gate.wait(time.monotonic() + 5))
        await asyncio.sleep(0.05)
        assert set(asked) == {"10.96.0.7:8000"}  # no pod yet: the Service only
        with_pod = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", pods=("10.244.0.12",))
        gates.refresh({with_pod.key: with_pod})  # the operator saw the pod get its address
        assert gates.gate(with_pod) is gate  # same gate: what it holds stays held
        await asyncio.sleep(0.05)
        assert "10.244.0.12:8000" in asked and not held.done()
        ready.add("10.244.0.12:8000")  # Ready; the Service has no endpoint for it yet
        await held
        assert gate.target.http == "10.244.0.12:8000" and gate.target.grpc == "10.244.0.12:8001"
        gate.close()  # it went away: the next cold start probes again, the Service as fallback
        assert gate.target == with_pod
        ready.clear()
        ready.add("10.96.0.7:8000")
        again = asyncio.create_task(gate.wait(time.monotonic() + 5))
        await again
        assert gate.target.http == "10.96.0.7:8000"
        other = Route("ml", "digits", "digits", "10.96.0.9:8000", "10.96.0.9:8001")
        assert gates.gate(other) is not gate  # another Service: a new gate
        await gates.aclose()
        await demand.aclose()

    run(main())


def test_a_model_going_to_zero_again_closes_its_gate_before_any_request_goes_to_its_last_pod() -> None:
    """Found on the real node: after a first cold start the gate stayed open on the pod it found;
    when the model went to zero again, requests were forwarded there (a dead address, 3 s of ARP
    each) instead of being held. The operator's route says `serving` while the Service points at
    the pods; its turning false closes the gate."""
    async def main() -> None:
        ready: set[str] = set()

        async def probe(route: Route) -> bool:
            return route.http in ready

        metrics, sink = ActivatorMetrics(), Sink()
        demand = ThrottledDemand(sink, metrics, renew_s=60)
        gates = Gates(HoldSettings(probe_interval_s=0.01), metrics, probe, demand)
        starting = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", pods=("10.244.0.12",))
        gate = gates.gate(starting)
        ready.add("10.244.0.12:8000")
        await gate.wait(time.monotonic() + 5)
        assert gate.is_open and gate.target.http == "10.244.0.12:8000"
        serving = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", serving=True)
        gates.refresh({serving.key: serving})  # the Service went back to the pods
        assert gate.is_open  # what still reaches it (kube-proxy catching up) goes on to the pod
        ready.clear()  # the pod goes with the model going to zero
        at_zero = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001")
        gates.refresh({at_zero.key: at_zero})
        assert not gate.is_open  # the next request is held, not sent to where the pod was
        held = asyncio.create_task(gate.wait(time.monotonic() + 5))
        await asyncio.sleep(0.05)
        assert not held.done() and len(sink.calls) == 2  # held, and demand written again
        ready.add("10.96.0.7:8000")
        await held
        await gates.aclose()
        await demand.aclose()

    run(main())


def test_a_pod_that_does_not_answer_does_not_slow_the_probe_of_one_that_does() -> None:
    async def main() -> None:
        async def probe(route: Route) -> bool:
            if route.http.startswith("10.244.0.1:"):
                await asyncio.sleep(3)  # a dead address: connect waits on ARP
                return False
            return route.http.startswith("10.244.0.2:")

        metrics, sink = ActivatorMetrics(), Sink()
        demand = ThrottledDemand(sink, metrics, renew_s=60)
        gates = Gates(HoldSettings(probe_interval_s=0.01), metrics, probe, demand)
        gate = gates.gate(Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001",
                                pods=("10.244.0.1", "10.244.0.2")))
        held = await gate.wait(time.monotonic() + 5)
        assert held < 1 and gate.target.http == "10.244.0.2:8000"
        await gates.aclose()
        await demand.aclose()

    run(main())
