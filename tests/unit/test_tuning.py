"""Deploy-time tuning's decisions (issue 18), table by table: settings, candidates, scores, the
search under a budget, and the choice that is never worse than the default. Pure: no Triton here
(tests/integration/test_tuning.py runs the real sweep)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from modeldeploy.resources.triton_config import (
    Backend,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    render_config,
)
from modeldeploy.tuning import choose, search
from modeldeploy.tuning.score import Measurement, Point, better, meets, operating_point, percentile, value
from modeldeploy.tuning.settings import DEFAULT_BUDGET_S, TuneSettings, parse
from modeldeploy.tuning.space import Candidate, Hardware, effective, from_config, neighbors, to_config

BASE = ModelConfig(name="digits", backend=Backend.PYTHON_ONNX,
                   inputs=(TensorSpec("x", "TYPE_FP32", (1, 8, 8)),), outputs=(TensorSpec("y", "TYPE_FP32", (10,)),),
                   max_batch_size=8, parameters=(("modeldeploy.version", "3"),))
DEFAULT = from_config(BASE)
CPU2 = Hardware(cpus=2, gpus=0, backend=Backend.PYTHON_ONNX)
GPU1 = Hardware(cpus=8, gpus=1, backend=Backend.ONNXRUNTIME)
TPUT = TuneSettings()
BOUND = TuneSettings(max_p99_s=0.020)
LAT = TuneSettings(objective="latency", max_p99_s=0.020)


def m(c: Candidate, *points: tuple[int, float, float], seconds: float = 5.0, error: str = "") -> Measurement:
    """A measurement from (concurrency, throughput, p99 ms) triples (p50 is half the p99)."""
    return Measurement(c, tuple(Point(cc, t, p99 / 2000, p99 / 1000, requests=100) for cc, t, p99 in points),
                       seconds, error)


# ---------------------------------------------------------------- settings (MD_TUNE)


@pytest.mark.parametrize(("text", "want"), [
    ("", None),
    ("{}", TuneSettings()),
    ('{"objective": "latency", "maxP99Ms": 50, "budgetSeconds": 60, "onBoundMiss": "Fail", "concurrency": [32, 1],'
     ' "cpus": 4}', TuneSettings("latency", 0.05, 60.0, "Fail", (1, 32), 4)),
])
def test_settings_parse(text: str, want: TuneSettings | None) -> None:
    assert parse(text) == want
    if want is not None:
        assert parse(want.to_env()) == want  # the operator's form reads back as itself


@pytest.mark.parametrize(("text", "error"), [
    ("[]", "must be a JSON object"),
    ("{", "not JSON"),
    ('{"objective": "speed"}', "objective must be one of throughput, latency"),
    ('{"onBoundMiss": "Ignore"}', "onBoundMiss must be one of ServeBest, Fail"),
    ('{"budgetSeconds": 5}', "budgetSeconds must be between 10 and 3600"),
    ('{"maxP99Ms": "50ms"}', "maxP99Ms must be a number"),
    ('{"concurrency": [0]}', "concurrency levels must be integers between 1 and 256"),
    ('{"concurrency": []}', "concurrency must be a list of 1 to 8 integers"),
    ('{"cpus": 1.5}', "cpus must be an integer"),
    ('{"budget": 60}', "unknown keys"),
])
def test_settings_refused_with_the_key_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse(text)


def test_default_budget_is_a_few_minutes() -> None:
    assert 60 <= DEFAULT_BUDGET_S <= 300 and TuneSettings().concurrency == (1, 8, 32)


# ---------------------------------------------------------------- candidates


def test_the_default_config_is_a_candidate_and_renders_unchanged() -> None:
    assert Candidate(max_batch_size=8) == DEFAULT
    assert render_config(to_config(DEFAULT, BASE)) == render_config(BASE)


def test_to_config_sets_exactly_the_tuned_settings() -> None:
    c = Candidate(max_batch_size=32, queue_delay_us=100, preferred=(32,), instances=2, intra_threads=1,
                  inter_threads=2)
    cfg = to_config(c, BASE)
    assert cfg.max_batch_size == 32 and cfg.dynamic_batching == DynamicBatching(100, (32,))
    assert cfg.instance_groups == (InstanceGroup(count=2),)
    assert dict(cfg.parameters) == {"modeldeploy.version": "3", "intra_op_thread_count": "1",
                                    "inter_op_thread_count": "2", "execution_mode": "1"}
    assert (cfg.inputs, cfg.outputs, cfg.warmup, cfg.backend) == (BASE.inputs, BASE.outputs, BASE.warmup, BASE.backend)
    assert from_config(cfg) == c  # and back
    text = render_config(cfg)
    assert 'key: "intra_op_thread_count" value: { string_value: "1" }' in text
    assert "max_queue_delay_microseconds: 100" in text


def test_the_accelerator_renders_onnxruntimes_tensorrt_provider_on_a_gpu_only() -> None:
    gpu = dataclasses.replace(BASE, backend=Backend.ONNXRUNTIME, instance_groups=(InstanceGroup(1, "KIND_GPU", (0,)),))
    text = render_config(to_config(Candidate(8, accelerator="tensorrt-fp16"), gpu))
    assert 'gpu_execution_accelerator: [ {\n      name: "tensorrt"' in text
    assert 'parameters { key: "precision_mode" value: "FP16" }' in text
    assert "precision_mode" not in render_config(to_config(Candidate(8, accelerator="tensorrt"), gpu))
    with pytest.raises(ValueError, match="needs the onnxruntime backend on a GPU"):
        render_config(to_config(Candidate(8, accelerator="tensorrt"), BASE))


def _all(c: Candidate, hw: Hardware, default: Candidate = DEFAULT) -> list[Candidate]:
    return list(neighbors(c, default, hw))


def _changed(a: Candidate, b: Candidate) -> set[str]:
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


START = Candidate(8, queue_delay_us=0)


@pytest.mark.parametrize(("what", "check"), [
    ("never lowers the max batch size below the default's", lambda ns: all(n.max_batch_size >= 8 for n in ns)),
    ("tries larger max batch sizes", lambda ns: {n.max_batch_size for n in ns} == {8, 16, 32, 64}),
    ("preferred sizes fit the max batch size", lambda ns: all(p <= n.max_batch_size for n in ns for p in n.preferred)),
    ("tries the dynamic batcher", lambda ns: {n.queue_delay_us for n in ns} == {None, 0, 100, 500, 2000}),
    ("at most one CPU instance per core", lambda ns: {n.instances for n in ns} == {1, 2}),
    ("threads only up to the cores", lambda ns: {n.intra_threads for n in ns} == {0, 1, 2}),
    ("no accelerator on the CPU", lambda ns: all(not n.accelerator for n in ns)),
    # one setting at a time (a batch size with the preferred sizes it allows)
    ("one setting changed at a time", lambda ns: all(
        len(_changed(n, START) - {"preferred"}) <= 1 for n in ns)),
])
def test_cpu_neighbours(what: str, check: Callable[[list[Candidate]], bool]) -> None:
    assert check(_all(START, CPU2)), what


def test_gpu_neighbours_try_tensorrt_and_fp16_and_no_threads() -> None:
    ns = _all(START, GPU1)
    assert {n.accelerator for n in ns} == {"", "tensorrt", "tensorrt-fp16"}
    assert all(n.intra_threads == 0 and n.inter_threads == 0 for n in ns)
    assert {n.instances for n in ns} == {1, 2, 3}


def test_without_a_batcher_batch_sizes_are_not_tried_and_collapse() -> None:
    ns = _all(DEFAULT, CPU2)
    assert all(n.max_batch_size == 8 and not n.preferred for n in ns)
    assert effective(Candidate(64, None, (64,)), DEFAULT) == DEFAULT


def test_a_model_without_a_batch_axis_gets_no_batching_candidates() -> None:
    flat = Candidate(0)
    assert all(n.queue_delay_us is None and n.max_batch_size == 0 for n in _all(flat, CPU2, flat))


# ---------------------------------------------------------------- scores


A = Candidate(8, 0)
B = Candidate(16, 0)


@pytest.mark.parametrize(("tune", "meas", "want"), [
    (TPUT, m(A, (1, 100, 5), (8, 400, 30), (32, 500, 90)), (32, 500)),  # no bound: the best throughput
    (BOUND, m(A, (1, 100, 5), (8, 400, 15), (32, 500, 90)), (8, 400)),  # the best within 20ms
    (BOUND, m(A, (1, 100, 25), (8, 400, 30)), None),  # nothing within the bound
    (LAT, m(A, (1, 100, 5), (32, 500, 15)), (32, 500)),  # latency: judged at the top level
    (LAT, m(A, (1, 100, 5), (32, 500, 25)), None),
    (TPUT, m(A, (1, 100, 5), error="refused"), None),
])
def test_operating_point(tune: TuneSettings, meas: Measurement, want: tuple[int, float] | None) -> None:
    p = operating_point(meas, tune)
    assert (None if p is None else (p.concurrency, p.throughput)) == want
    assert meets(meas, tune) is (want is not None)


@pytest.mark.parametrize(("tune", "a", "b", "margin", "want"), [
    (TPUT, m(A, (32, 1100, 10)), m(B, (32, 1000, 10)), 0.0, True),
    (TPUT, m(A, (32, 1020, 10)), m(B, (32, 1000, 10)), 0.03, False),  # within the noise margin
    (TPUT, m(A, (32, 1040, 10)), m(B, (32, 1000, 10)), 0.03, True),
    (BOUND, m(A, (32, 100, 15)), m(B, (32, 5000, 25)), 0.03, True),  # meeting the bound beats any throughput
    (BOUND, m(A, (32, 5000, 25)), m(B, (32, 100, 30)), 0.03, True),  # both miss: the closer one
    (LAT, m(A, (32, 100, 8)), m(B, (32, 100, 10)), 0.03, True),  # latency: lower p99 wins
    (TPUT, m(A, (32, 9999, 1), error="x"), m(B, (32, 1, 99)), 0.0, False),  # a failed one never wins
    (TPUT, m(A, (32, 1, 99)), m(B, (32, 9999, 1), error="x"), 0.0, True),
])
def test_better(tune: TuneSettings, a: Measurement, b: Measurement, margin: float, want: bool) -> None:
    assert better(a, b, tune, margin) is want


def test_a_level_with_errors_fails_the_candidate() -> None:
    bad = Measurement(A, (Point(32, 1000, 0.001, 0.002, requests=100, errors=1),))
    assert not bad.ok and not meets(bad, TPUT)


@pytest.mark.parametrize(("n", "q", "want"), [
    (1, 99, 1), (100, 99, 99), (100, 50, 50), (150, 99, 149), (10, 99, 10), (10, 50, 5),
])
def test_percentile_is_an_observed_value(n: int, q: float, want: float) -> None:
    assert percentile([float(v) for v in range(1, n + 1)], q) == want


# ---------------------------------------------------------------- the search


def test_search_starts_with_the_default_then_its_neighbours_batcher_first() -> None:
    assert search.next_candidate(DEFAULT, CPU2, [], TPUT, 0.0) == DEFAULT
    history = [m(DEFAULT, (32, 1000, 30))]
    assert search.next_candidate(DEFAULT, CPU2, history, TPUT, 5.0) == Candidate(8, 0)


def test_search_moves_to_a_better_candidate_and_skips_what_it_measured() -> None:
    history = [m(DEFAULT, (32, 1000, 30)), m(Candidate(8, 0), (32, 2000, 15))]
    # the batcher changed: the next setting (instances) comes before other delays (coordinate descent's cycle)
    assert search.next_candidate(DEFAULT, CPU2, history, TPUT, 10.0) == Candidate(8, 0, instances=2)
    assert search.incumbent(DEFAULT, history, TPUT) is history[1]
    history.append(m(Candidate(8, 0, instances=2), (32, 1500, 20)))  # worse: on to the batch size
    assert search.next_candidate(DEFAULT, CPU2, history, TPUT, 15.0) == Candidate(16, 0)
    history.append(m(Candidate(16, 0), (32, 2500, 12)))  # better: after batch sizes come preferred sizes
    assert search.next_candidate(DEFAULT, CPU2, history, TPUT, 20.0) == Candidate(16, 0, (16,))


def test_the_cycle_wraps_around_to_the_first_setting() -> None:
    threads = Candidate(8, 0, intra_threads=1)
    after = list(neighbors(Candidate(8, 0, intra_threads=1, inter_threads=2), DEFAULT, CPU2, after=threads))
    assert after[0].queue_delay_us is None and after[0].inter_threads == 2  # inter-op was last: the batcher next


def test_a_gain_inside_the_noise_does_not_move_the_search() -> None:
    history = [m(DEFAULT, (32, 1000, 30)), m(Candidate(8, 0), (32, 1020, 30))]
    assert search.incumbent(DEFAULT, history, TPUT) is history[0]


def test_the_budget_stops_the_search_but_never_the_default() -> None:
    tight = TuneSettings(budget_s=30)
    history = [m(DEFAULT, (32, 1000, 30), seconds=8)]
    assert search.next_candidate(DEFAULT, CPU2, history, tight, 6.1) is None  # 6.1 + 8 x 3 > 30 (confirmation)
    assert search.next_candidate(DEFAULT, CPU2, history, tight, 5.9) is not None  # 5.9 + 24 <= 30
    assert search.next_candidate(DEFAULT, CPU2, [], TuneSettings(budget_s=10), 1e9) == DEFAULT


def test_search_stops_at_a_local_optimum() -> None:
    history = [m(DEFAULT, (32, 1000, 30))]
    while (c := search.next_candidate(DEFAULT, CPU2, history, TuneSettings(budget_s=3600), 0.0)) is not None:
        history.append(m(c, (32, 500, 60)))  # everything else is worse: only the default's neighbours
    assert {h.candidate for h in history[1:]} == {effective(n, DEFAULT) for n in neighbors(DEFAULT, DEFAULT, CPU2)
                                                  } - {DEFAULT}


def _world(c: Candidate) -> tuple[float, float]:
    """A made-up server: batching helps (more with a larger max batch), delay costs, a second
    instance on two cores hurts, two intra-op threads help a little. (throughput at c=32, p99 ms)"""
    t = 1000.0
    if c.queue_delay_us is not None:
        t *= 1.8 + 0.1 * (c.max_batch_size // 8) - c.queue_delay_us / 4000
    t *= {1: 1.0, 2: 0.8}[c.instances]
    t *= {0: 1.0, 1: 0.9, 2: 1.05}[c.intra_threads]
    return t, 32 / t * 1000 * 1.5


def test_a_sweep_finds_the_best_configuration_inside_its_budget() -> None:
    tune = TuneSettings(budget_s=180)
    clock = 0.0
    history: list[Measurement] = []
    while (c := search.next_candidate(DEFAULT, CPU2, history, tune, clock)) is not None:
        t, p99 = _world(c)
        history.append(m(c, (32, t, p99), seconds=4.0))
        clock += 4.0
    assert clock + 2 * 4.0 <= tune.budget_s  # the confirmation still fits
    best = search.incumbent(DEFAULT, history, tune)
    assert best is not None and best.candidate == Candidate(64, 0, (), 1, 2, 0)
    assert len(history) < 40  # a grid of these settings has 5 x 2 x 4 x 2 x 3 x 3 = 720 points


def test_a_small_budget_stops_the_same_sweep_early() -> None:
    tune = TuneSettings(budget_s=30)
    clock, history = 0.0, []
    while (c := search.next_candidate(DEFAULT, CPU2, history, tune, clock)) is not None:
        t, p99 = _world(c)
        history.append(m(c, (32, t, p99), seconds=4.0))
        clock += 4.0
    assert len(history) == 5 and clock + 2 * 4.0 <= 30  # a sixth would end at 24 + 8 > 30


def test_measurement_windows_shrink_with_the_budget() -> None:
    assert search.windows_s(TuneSettings(budget_s=180)) == pytest.approx((0.75, 3.0))
    assert search.windows_s(TuneSettings(budget_s=10)) == (0.2, 0.5)
    assert search.windows_s(TuneSettings(budget_s=3600)) == (1.0, 5.0)


# ---------------------------------------------------------------- the choice


DEF_M = m(DEFAULT, (1, 500, 3), (32, 1000, 40))


@pytest.mark.parametrize(("tune", "cand", "want"), [
    (TPUT, m(A, (1, 450, 4), (32, 2000, 20)), True),
    (TPUT, m(A, (1, 450, 4), (32, 1020, 20)), False),  # not better by enough
    (TPUT, m(A, (1, 450, 4), (32, 2000, 60)), False),  # faster but a worse p99 at the top
    (TPUT, m(A, (1, 450, 4), (32, 2000, 43)), True),  # p99 within the tolerance
    (BOUND, m(A, (1, 450, 30), (32, 2000, 25)), False),  # the default meets 20ms (at c=1), this does not
    (LAT, m(A, (1, 450, 3), (32, 700, 30)), False),  # lower p99 but 30% less throughput
    (TPUT, m(A, (32, 2000, 20), error="refused"), False),
])
def test_acceptable_never_worse_than_the_default(tune: TuneSettings, cand: Measurement, want: bool) -> None:
    assert choose.acceptable(cand, DEF_M, tune) is want
    assert (choose.verdict(cand, DEF_M, tune) == "") is want


@pytest.mark.parametrize(("tune", "cand", "why"), [
    (TPUT, m(A, (1, 450, 4), (32, 1020, 20)), "not better than the default by more than 3%"),
    (TPUT, m(A, (1, 450, 4), (32, 2000, 60)), "its p99 at concurrency 32 is more than 10% worse than the default's"),
    (BOUND, m(A, (1, 450, 30), (32, 2000, 25)), "the default meets maxP99 and it does not"),
    (LAT, m(A, (1, 450, 2), (32, 700, 15)), "its throughput at concurrency 32 is more than 10% worse"),
])
def test_verdict_says_why(tune: TuneSettings, cand: Measurement, why: str) -> None:
    assert choose.verdict(cand, DEF_M, tune).startswith(why)


def test_ranked_puts_the_default_last() -> None:
    c1, c2 = m(A, (1, 450, 4), (32, 2000, 20)), m(B, (1, 450, 4), (32, 3000, 20))
    worse = m(Candidate(8, 500), (1, 1, 1), (32, 900, 50))
    assert choose.ranked(DEF_M, [c1, c2, worse], TPUT) == [c2, c1, DEF_M]
    assert choose.ranked(DEF_M, [DEF_M], TPUT) == [DEF_M]


def test_confirmed_averages_both_measurements() -> None:
    both = choose.confirmed(m(A, (32, 1000, 10), seconds=4), m(A, (32, 3000, 30), seconds=5))
    (p,) = both.points
    assert (p.throughput, p.p99_s, p.requests, both.seconds) == (2000, pytest.approx(0.020), 200, 9)
    assert not choose.confirmed(m(A, (32, 1, 1)), m(A, error="gone")).ok  # a failed rerun fails the candidate


def test_summary_and_the_miss_message_carry_the_numbers() -> None:
    chosen = m(A, (1, 450, 25), (32, 2000, 28))
    o = choose.Outcome(chosen=chosen, default=DEF_M, bound_met=False, measured=12, seconds=171.4)
    s = choose.summary(o, BOUND)
    assert s["tuned"] == {"concurrency": 32, "throughput": 2000, "p50Ms": 14.0, "p99Ms": 28.0}
    assert s["default"] == {"concurrency": 32, "throughput": 1000, "p50Ms": 20.0, "p99Ms": 40.0}
    assert (s["boundMet"], s["isDefault"], s["candidates"], s["maxP99Ms"]) == (False, False, 12, 20.0)
    assert s["settings"] == {"maxBatchSize": 8, "instances": 1,
                             "dynamicBatching": {"maxQueueDelayMicroseconds": 0, "preferredBatchSizes": []}}
    json.dumps(s)
    text = choose.miss_message(o, BOUND)
    assert "maxP99 20ms" in text and "lowest p99 25.0ms at concurrency 1" in text and "12 candidates" in text


def test_the_build_log_table_has_a_row_per_candidate() -> None:
    rows = choose.table([DEF_M, m(A, error="Triton refused it: bad")], (1, 32))
    assert len(rows) == 3 and "failed: Triton refused it: bad" in rows[2] and "1000.0" in rows[1]


def test_value_signs() -> None:
    assert value(m(A, (32, 1000, 10)), TPUT) == 1000
    assert value(m(A, (32, 1000, 10)), LAT) == pytest.approx(-0.010)
