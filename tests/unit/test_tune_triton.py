"""The tuning driver's own small decisions: scratch names, the requests it sends, and when a
candidate's answers count as the default's (tests/integration/test_tuning.py runs it for real)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modeldeploy.loader.tune_triton import requests_from, same_answers, scratch_name

REF = [np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)]


def test_scratch_names_never_take_the_served_models_name() -> None:
    assert scratch_name("digits", 3) == "modeldeploy-tune-3"
    assert scratch_name("modeldeploy-tune-3", 3) == "modeldeploy-tune-x-3"


@pytest.mark.parametrize(("got", "fp16", "want"), [
    ([REF[0] + 1e-7], False, ""),  # float rounding of another batch composition
    ([REF[0] + 1e-2], False, "output 0: largest difference 0.01"),
    ([REF[0][:1]], False, "output 0 has shape (1, 3), the default's (2, 3)"),
    ([REF[0] + 0.05], True, ""),  # FP16: the same top-1 is what counts
    ([REF[0][:, ::-1].copy()], True, "output 0: top-1 agreement 0.5000 with the default < 0.99"),
])
def test_same_answers(got: list[np.ndarray], fp16: bool, want: str) -> None:
    text = same_answers(REF, got, fp16, 0.99)
    assert (text == "") if not want else text.startswith(want), text


def test_integer_outputs_must_be_equal() -> None:
    a = [np.array([1, 2, 3])]
    assert same_answers(a, [np.array([1, 2, 3])], False, 0.99) == ""
    assert same_answers(a, [np.array([1, 2, 4])], False, 0.99) == "output 0 differs from the default's answers"


def test_requests_carry_one_sample_each() -> None:
    x = np.arange(2 * 70 * 4, dtype=np.float32).reshape(140, 4)
    reqs = requests_from({"x": x}, ["y"])
    assert len(reqs) == 64  # at most REQUEST_SAMPLES distinct requests
    header = json.loads(reqs[5].body[:reqs[5].header_length])
    assert header["inputs"][0]["shape"] == [1, 4] and header["outputs"] == [{"name": "y", "parameters":
                                                                               {"binary_data": True}}]
    assert np.frombuffer(reqs[5].body[reqs[5].header_length:], dtype=np.float32).tolist() == x[5].tolist()
