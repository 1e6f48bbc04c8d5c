"""Deploy-time tuning (issue 18): which Triton configuration serves this model best here (pure).

Every decision is a pure function with table tests: the settings (settings.py), the candidates
(space.py), how one measurement scores against the objective and the latency bound (score.py),
what to measure next under the time budget (search.py) and which configuration wins, never one
worse than the default (choose.py). The measuring itself (a closed-loop HTTP client against the
build Job's Triton) lives in loader/tune_client.py and loader/tune_triton.py.
"""
