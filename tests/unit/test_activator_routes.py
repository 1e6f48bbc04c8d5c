"""Which model a request is for (activator/routes.py): Host, ClusterIP, KServe v2 path, gRPC message."""

from __future__ import annotations

import json

import pytest

from modeldeploy.activator.routes import (
    Route,
    RoutesError,
    dump_routes,
    first_string_field,
    parse_routes,
    resolve_grpc,
    resolve_http,
    v2_model_name,
)

DIGITS = {"namespace": "ml", "name": "digits", "model": "digits", "clusterIPs": ["10.96.0.12", "fd00::12"],
          "http": "digits-stable.ml.svc:8000", "grpc": "digits-stable.ml.svc:8001"}
RESNET_A = {"namespace": "team-a", "name": "resnet", "model": "resnet50", "http": "resnet-stable.team-a.svc:8000",
            "grpc": "resnet-stable.team-a.svc:8001"}
RESNET_B = {**RESNET_A, "namespace": "team-b", "http": "resnet-stable.team-b.svc:8000",
            "grpc": "resnet-stable.team-b.svc:8001"}
TABLE = parse_routes(json.dumps({"models": [DIGITS, RESNET_A, RESNET_B]}))


@pytest.mark.parametrize(("host", "path", "key"), [
    ("digits.ml.svc.cluster.local:8000", "/v2/models/digits/infer", "ml/digits"),
    ("digits.ml.svc", "/v2/health/ready", "ml/digits"),  # server-level calls route by Host
    ("digits.ml:8000", "/v2", "ml/digits"),
    ("DIGITS.ML.SVC.cluster.local.", "/v2/models/digits/infer", "ml/digits"),
    ("10.96.0.12:8000", "/v2/models/digits/infer", "ml/digits"),  # by ClusterIP
    ("[fd00::12]:8000", "/v2/models/digits/ready", "ml/digits"),
    ("digits:8000", "/v2/models/digits/infer", "ml/digits"),  # short name, unique
    ("resnet.team-b.svc", "/v2/models/resnet50/infer", "team-b/resnet"),
    ("gateway.example.com", "/v2/models/digits/infer", "ml/digits"),  # Host unknown: the model, unique
    (None, "/v2/models/digits/versions/1/infer", "ml/digits"),
])
def test_http_resolves(host: str | None, path: str, key: str) -> None:
    found = resolve_http(TABLE, host, path)
    assert found.route is not None and found.route.key == key, found.problem


@pytest.mark.parametrize(("host", "path", "words"), [
    ("other.ml.svc", "/v2/models/digits/infer", "no model at zero is served as other.ml"),  # Host wins over path
    ("resnet:8000", "/v2/models/resnet50/infer", "several models"),  # two namespaces: ambiguous
    ("gateway.example.com", "/v2/models/resnet50/infer", "several models"),
    ("10.1.2.3", "/v2/health/ready", "no model at zero matches"),
    ("kubernetes.default.svc", "/api", "no model at zero is served as kubernetes.default"),  # never an open proxy
])
def test_http_refuses(host: str, path: str, words: str) -> None:
    found = resolve_http(TABLE, host, path)
    assert found.route is None and words in found.problem


def _pb_string(field: int, text: str) -> bytes:
    data = text.encode()
    return bytes([field << 3 | 2, len(data)]) + data


def test_grpc_resolves_by_model_in_message_or_target_metadata() -> None:
    infer = _pb_string(1, "digits") + _pb_string(2, "1") + bytes([3 << 3 | 0, 7])
    assert first_string_field(infer) == "digits"
    assert resolve_grpc(TABLE, {}, infer).route.key == "ml/digits"  # type: ignore[union-attr]
    # field 1 after other fields (a varint, a fixed64) still found
    assert first_string_field(bytes([2 << 3 | 0, 5, 4 << 3 | 1]) + b"\0" * 8 + _pb_string(1, "x")) == "x"
    ambiguous = resolve_grpc(TABLE, {}, _pb_string(1, "resnet50"))
    assert ambiguous.route is None and "several models" in ambiguous.problem
    chosen = resolve_grpc(TABLE, {"modeldeploy-target": "team-b/resnet"}, _pb_string(1, "resnet50"))
    assert chosen.route is not None and chosen.route.key == "team-b/resnet"
    assert resolve_grpc(TABLE, {}, b"").route is None  # ServerReady: names no model
    assert resolve_grpc(TABLE, {"modeldeploy-target": "ml/nope"}, b"").route is None
    assert first_string_field(b"\x0a\xff") is None  # truncated: no crash


@pytest.mark.parametrize(("doc", "words"), [
    ("not json", "not JSON"),
    ('{"models": {}}', "list `models`"),
    (json.dumps({"models": [{**DIGITS, "namespace": "ML!"}]}), "models[0].namespace"),
    (json.dumps({"models": [{**DIGITS, "http": "http://x:80"}]}), "models[0].http"),
    (json.dumps({"models": [{**DIGITS, "grpc": "x:99999"}]}), "models[0].grpc"),
    (json.dumps({"models": [{**DIGITS, "clusterIPs": ["not-an-ip"]}]}), "models[0].clusterIPs"),
    (json.dumps({"models": [DIGITS, DIGITS]}), "listed twice"),
])
def test_bad_routes_name_the_field(doc: str, words: str) -> None:
    with pytest.raises(RoutesError) as e:
        parse_routes(doc)
    assert words in str(e.value)


def test_dump_and_parse_round_trip() -> None:
    r = Route("ml", "digits", "digits", "a.b.svc:8000", "a.b.svc:8001", ("10.0.0.1",))
    assert parse_routes(dump_routes([r])).routes == (r,)
    assert parse_routes("").routes == ()  # an empty ConfigMap: no models at zero
    assert v2_model_name("/v2/models/my%20model/infer") == "my model"
    assert v2_model_name("/v2/health/ready") is None


def test_a_removed_route_stays_routable_for_a_grace_period() -> None:
    from modeldeploy.activator.source import Routes

    now = [0.0]
    seen: list[int] = []
    routes = Routes(lambda t: seen.append(len(t.routes)), grace_s=60, clock=lambda: now[0])
    routes.update(json.dumps({"models": [DIGITS, RESNET_A]}))
    routes.update(json.dumps({"models": [RESNET_A]}))  # the operator: digits is serving again
    assert seen == [2, 1]  # what the operator lists
    assert routes.table().get("ml", "digits") is not None  # in-flight connections still forwarded
    now[0] = 59.0
    assert routes.table().get("ml", "digits") is not None
    now[0] = 60.5
    assert routes.table().get("ml", "digits") is None and routes.table().get("team-a", "resnet") is not None
    routes.update(json.dumps({"models": [RESNET_A, {**DIGITS, "http": "x:1"}]}))  # back at zero, new backend
    routes.update(json.dumps({"models": [RESNET_A, DIGITS]}))
    assert routes.table().get("ml", "digits").http == DIGITS["http"]  # type: ignore[union-attr]
    routes.update("not json")  # a bad document keeps the table
    assert len(routes.table().routes) == 2


def test_starting_pods_round_trip_and_bad_addresses_are_named() -> None:
    from modeldeploy.activator.routes import Route, RoutesError, dump_routes, parse_routes

    r = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", ("10.96.0.7",), ("10.244.0.12", "fd00::5"))
    (back,) = parse_routes(dump_routes([r])).routes
    assert back == r
    assert back.via_pod("fd00::5").http == "[fd00::5]:8000" and back.via_pod("10.244.0.12").grpc == "10.244.0.12:8001"
    assert back.same_backends(Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", ("10.96.0.7",)))
    assert "pods" not in dump_routes([Route("ml", "d", "d", "a:1", "a:2")])  # unchanged documents without pods
    import pytest

    with pytest.raises(RoutesError, match=r"models\[0\]\.pods"):
        parse_routes('{"models": [{"namespace": "ml", "name": "d", "http": "a:1", "grpc": "a:2", "pods": ["x"]}]}')


def test_serving_round_trips_and_is_not_a_new_backend() -> None:
    serving = Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", ("10.96.0.5",), serving=True)
    (back,) = parse_routes(dump_routes([serving])).routes
    assert back == serving
    assert serving.same_backends(Route("ml", "digits", "digits", "10.96.0.7:8000", "10.96.0.7:8001", ("10.96.0.5",)))
    with pytest.raises(RoutesError, match=r"models\[0\]\.serving"):
        parse_routes('{"models": [{"namespace": "ml", "name": "d", "http": "a:1", "grpc": "a:2", "serving": "yes"}]}')
