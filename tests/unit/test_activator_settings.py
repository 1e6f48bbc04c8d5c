"""The activator's settings (environment and flags) and the demand Lease's annotation format."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from modeldeploy.activator.cli import main
from modeldeploy.activator.settings import SettingsError, activator_settings
from modeldeploy.kube.activator import DEMAND_PREFIX, demand_key, demand_value, parse_demand

BASE = {"MD_ACTIVATOR_ROUTES_FILE": "/tmp/routes.json"}


def test_defaults_and_a_flag_wins_over_the_environment() -> None:
    s = activator_settings([], BASE)
    assert (s.http_port, s.grpc_port, s.admin_port) == (8000, 8001, 9090)
    assert s.hold.max_held == 1000 and s.hold.timeout_s == 120 and s.hold.retry_after_s == 2
    assert s.grpc_max_connection_age_s == 10 and s.max_held_bytes == 2**30
    s = activator_settings(["--max-held", "7"], {**BASE, "MD_ACTIVATOR_MAX_HELD": "9"})
    assert s.hold.max_held == 7


@pytest.mark.parametrize(("env", "words"), [
    ({}, "MD_ACTIVATOR_ROUTES_CONFIGMAP or MD_ACTIVATOR_ROUTES_FILE is required"),
    ({**BASE, "MD_ACTIVATOR_MAX_HELD": "0"}, "MD_ACTIVATOR_MAX_HELD must be between 1"),
    ({**BASE, "MD_ACTIVATOR_HTTP_PORT": "http"}, "MD_ACTIVATOR_HTTP_PORT must be a number"),
    ({**BASE, "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "0"}, "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS must be between"),
    ({**BASE, "MD_LOG_LEVEL": "LOUD"}, "MD_LOG_LEVEL must be one of"),
    ({"MD_ACTIVATOR_ROUTES_CONFIGMAP": "routes"}, "MD_ACTIVATOR_NAMESPACE is required"),
])
def test_invalid_settings_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError) as e:
        activator_settings([], env)
    assert words in str(e.value)


def test_main_exits_2_on_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], {}) == 2
    assert "activator: error: MD_ACTIVATOR_ROUTES_CONFIGMAP" in capsys.readouterr().err


def test_demand_annotations_round_trip_and_long_names_are_hashed() -> None:
    at = dt.datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=dt.UTC)
    short = demand_key("ml", "digits")
    assert short == DEMAND_PREFIX + "ml.digits"
    long_ns, long_name = "n" * 63, "m" * 56
    hashed = demand_key(long_ns, long_name)
    assert hashed.startswith(DEMAND_PREFIX + "h-") and len(hashed.split("/", 1)[1]) <= 63
    annotations = {short: demand_value("ml", "digits", at, "activator-0"),
                   hashed: demand_value(long_ns, long_name, at),
                   DEMAND_PREFIX + "ml.other": demand_value("ml", "digits", at),  # key does not match: ignored
                   DEMAND_PREFIX + "ml.broken": "not json",
                   "unrelated": "x"}
    assert parse_demand(annotations) == {("ml", "digits"): at, (long_ns, long_name): at}
    assert json.loads(annotations[short])["by"] == "activator-0"
    assert parse_demand(None) == {}
