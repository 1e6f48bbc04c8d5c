"""The loader's limits and refusals, the pure parts: the byte budget, redirect rules, credential
headers, archive members, and how the operator passes the limit (spec, settings, pod template)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import api, config
from modeldeploy import constants as c
from modeldeploy.loader import limits, localsource
from modeldeploy.loader.errors import (
    ConfigError,
    FormatError,
    LoaderError,
    SizeLimitError,
    SourceRefused,
    TransientFetchError,
)
from modeldeploy.loader.fetch import (
    _announced,
    _Redirects,
    copy_into,
    is_credential_header,
    origin,
    redirect_refusal,
    show_origin,
)
from modeldeploy.loader.python_model import check_member, safe_extract
from modeldeploy.loader.settings import from_sources
from modeldeploy.resources.deployment import (
    Images,
    build_deployment,
    max_download_bytes,
    quantity,
    repository_size_limit,
)
from tests.integration.invalid_specs import BASE_NAME, BASE_SPEC, apply_patch

GiB = 2**30


# ---------------------------------------------------------------- the budget


def test_size_limit_is_a_deterministic_failure() -> None:
    assert issubclass(SizeLimitError, LoaderError) and not issubclass(SizeLimitError, TransientFetchError)
    assert SizeLimitError("x").exit_code == 1


def test_budget_refuses_what_does_not_fit_and_names_cap_and_source() -> None:
    budget = limits.ByteBudget(1000)
    budget.check(1000, "s3://b/k", "whatever")  # exactly the cap fits
    budget.add(600)
    assert budget.remaining == 400
    budget.check(400, "s3://b/k", "fits")
    with pytest.raises(SizeLimitError) as e:
        budget.check(401, "https://models.example/m.onnx", "the server announced 401 bytes (Content-Length)")
    msg = str(e.value)
    assert msg.startswith("https://models.example/m.onnx is larger than the download limit of 1000 bytes (1000 bytes, ")
    assert "MD_MAX_DOWNLOAD_BYTES" in msg and "spec.model.source.maxBytes" in msg
    assert "the server announced 401 bytes" in msg and "600 bytes were already fetched in this run" in msg


def test_budget_needs_a_positive_cap() -> None:
    with pytest.raises(ValueError):
        limits.ByteBudget(0)


@pytest.mark.parametrize(("n", "text"), [(512, "512 bytes"), (2048, "2 KiB"), (3 * 2**19, "1.5 MiB"),
                                          (10 * GiB, "10 GiB"), (2**40, "1 TiB")])
def test_human_sizes(n: int, text: str) -> None:
    assert limits.human(n) == text


@pytest.mark.parametrize(("value", "parsed"), [("123", 123), (" 42 ", 42), (None, None), ("", None), ("-1", None),
                                               ("1e9", None), ("12abc", None)])
def test_content_length_parsing_tolerates_garbage(value: str | None, parsed: int | None) -> None:
    assert _announced(value) == parsed


# ---------------------------------------------------------------- redirects and credentials


def test_origins_make_the_port_explicit() -> None:
    assert origin("https://Models.Example/a?b") == ("https", "models.example", 443)
    assert origin("http://127.0.0.1/x") == ("http", "127.0.0.1", 80)
    assert origin("http://[::1]:8080/x") == ("http", "::1", 8080)
    assert show_origin(origin("http://[::1]:8080/x?X-Amz-Signature=abc")) == "http://[::1]:8080"


@pytest.mark.parametrize(("old", "new", "refused"), [
    ("https://a/m", "http://a/m", "from https to http"),
    ("https://a/m", "http://b:8080/m", "from https to http"),
    ("http://a/m", "ftp://a/m", "ftp URL"),
    ("https://a/m", "file:///etc/passwd", "file URL"),
    ("http://a/m", "https://a/m", None),  # an upgrade is fine (credentials are still stripped: new origin)
    ("https://a/m", "https://cdn.example/m?sig=1", None),
    ("http://a/m", "http://a:81/m", None),
])
def test_redirect_refusals(old: str, new: str, refused: str | None) -> None:
    reason = redirect_refusal(old, new)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_credential_headers() -> None:
    for name in ("Authorization", "authorization", "Proxy-Authorization", "Cookie", "X-Amz-Security-Token",
                 "x-amz-date", "X-amz-content-sha256"):
        assert is_credential_header(name), name
    for name in ("Accept", "User-Agent", "Range", "Host"):
        assert not is_credential_header(name), name


def _redirected(url: str, to: str) -> urllib.request.Request | None:
    request = urllib.request.Request(url, headers={
        "Authorization": "Basic dXNlcjpwYXNz", "X-Amz-Security-Token": "TOKEN", "x-amz-date": "20240101T000000Z",
        "Accept": "*/*"})
    return _Redirects().redirect_request(request, io.BytesIO(b""), 302, "Found", {}, to)


def test_redirect_handler_keeps_credentials_on_the_same_origin_only() -> None:
    same = _redirected("http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b")
    assert same is not None and same.get_header("Authorization") == "Basic dXNlcjpwYXNz"
    assert same.get_header("X-amz-security-token") == "TOKEN"
    for other in ("http://127.0.0.1:8001/b", "http://localhost:8000/b", "https://127.0.0.1:8000/b"):
        new = _redirected("http://127.0.0.1:8000/a", other)
        assert new is not None and new.full_url == other
        assert {k.lower() for k, _ in new.header_items()} == {"accept"}, other


def test_redirect_handler_refuses_a_downgrade() -> None:
    with pytest.raises(Exception, match="from https to http"):
        _redirected("https://127.0.0.1:8443/a", "http://127.0.0.1:8000/a")


# ---------------------------------------------------------------- local sources, archives


@pytest.mark.parametrize(("path", "root", "inside"), [
    ("/source/a", "/source", True), ("/source", "/source", True), ("/source2/a", "/source", False),
    ("/etc/passwd", "/source", False), ("/source/../etc", "/source", False), ("/x", "/", True),
])
def test_inside(path: str, root: str, inside: bool) -> None:
    assert localsource.inside(path, root) is inside


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("member", "why"), [
    (_member("../x"), "outside the model directory"),
    (_member("a/../../x"), "outside the model directory"),
    (_member("/etc/cron.d/x"), "outside the model directory"),
    (_member("lib", tarfile.SYMTYPE, "/etc"), "is a link (to '/etc')"),
    (_member("inner", tarfile.SYMTYPE, "model.py"), "is a link"),
    (_member("pw", tarfile.LNKTYPE, "/etc/passwd"), "is a link (to '/etc/passwd')"),
    (_member("dev", tarfile.CHRTYPE), "not a plain file or directory"),
    (_member("fifo", tarfile.FIFOTYPE), "not a plain file or directory"),
])
def test_archive_members_refused(member: tarfile.TarInfo, why: str) -> None:
    with pytest.raises(FormatError, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_member(member)


def _tar(path: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extraction_applies_the_data_filter(tmp_path: Path) -> None:
    """Python >= 3.11.4's "data" filter is on: a setuid bit in the archive does not survive."""
    archive = _tar(tmp_path / "m.tar.gz", {"model.py": b"x = 1\n"}, mode=0o4755)
    safe_extract(archive, tmp_path / "out")
    mode = (tmp_path / "out" / "model.py").stat().st_mode
    assert not mode & stat.S_ISUID and (tmp_path / "out" / "model.py").read_bytes() == b"x = 1\n"


def test_extraction_refuses_an_archive_that_unpacks_past_the_limit(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "bomb.tar.gz", {"a.bin": bytes(600_000), "b.bin": bytes(600_000)})
    assert archive.stat().st_size < 10_000  # zeros compress: the download itself is tiny
    with pytest.raises(SizeLimitError, match=r"unpacks to more than 1 MiB \(1048576 bytes, MD_MAX_DOWNLOAD_BYTES\)"):
        safe_extract(archive, tmp_path / "out", max_bytes=2**20)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing was written


def test_local_copy_of_our_own_tree_refuses_links_out(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "model.py").write_text("x = 1\n")
    os.symlink("/etc/hostname", src / "host")
    with pytest.raises(SourceRefused, match="host is a symbolic link to '/etc/hostname', outside the source"):
        copy_into(src, tmp_path / "dest")


# ---------------------------------------------------------------- settings: loader and operator


def test_loader_setting_defaults_to_the_operators_default() -> None:
    s = from_sources([], {"MD_SOURCE_URI": "s3://b/k.onnx", "MD_MODEL_NAME": "m"})
    assert s.max_download_bytes == limits.DEFAULT_MAX_DOWNLOAD_BYTES == config.DEFAULT_MAX_DOWNLOAD_BYTES == 10 * GiB


@pytest.mark.parametrize("bad", ["0", "-5", "10Gi", "lots"])
def test_loader_setting_refuses_non_positive_or_non_integer(bad: str) -> None:
    with pytest.raises(ConfigError, match="MD_MAX_DOWNLOAD_BYTES") as e:
        from_sources([], {"MD_SOURCE_URI": "s3://b/k.onnx", "MD_MODEL_NAME": "m", "MD_MAX_DOWNLOAD_BYTES": bad})
    assert e.value.exit_code == 2


def test_loader_flag_overrides_the_variable() -> None:
    env = {"MD_SOURCE_URI": "s3://b/k.onnx", "MD_MODEL_NAME": "m", "MD_MAX_DOWNLOAD_BYTES": "5"}
    assert from_sources(["--max-download-bytes", "7"], env).max_download_bytes == 7
    assert from_sources([], env).max_download_bytes == 5


@pytest.mark.parametrize(("text", "value"), [("1048576", 2**20), ("10Gi", 10 * GiB), ("500M", 500_000_000),
                                             ("1Ti", 2**40), (" 3Ki ", 3072)])
def test_operator_setting_takes_bytes_or_quantities(text: str, value: int) -> None:
    assert config.from_env({"MD_MAX_DOWNLOAD_BYTES": text}).max_download_bytes == value


@pytest.mark.parametrize("bad", ["0", "1.5Gi", "10GB", "-1", "1.073741824e+10"])
def test_operator_setting_refuses_bad_values(bad: str) -> None:
    with pytest.raises(ValueError, match="MD_MAX_DOWNLOAD_BYTES"):
        config.from_env({"MD_MAX_DOWNLOAD_BYTES": bad})


def test_operator_setting_default() -> None:
    assert config.from_env({}).max_download_bytes == 10 * GiB


# ---------------------------------------------------------------- spec.model.source.maxBytes


def _spec(max_bytes: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec(apply_patch(BASE_SPEC, {"model": {"source": {"maxBytes": max_bytes}}}), name=BASE_NAME)


def test_spec_max_bytes_parses_with_bounds() -> None:
    assert _spec(None).model.source.max_bytes is None
    assert _spec(5 * GiB).model.source.max_bytes == 5 * GiB
    for bad in (0, -1, 2**40 + 1, "5Gi", 1.5, True):
        with pytest.raises(api.SpecError, match=r"spec\.model\.source\.maxBytes"):
            _spec(bad)


def test_spec_max_bytes_is_hashed_only_when_set() -> None:
    """Existing specs keep their revision (an operator upgrade rolls out nothing); setting it is a new revision."""
    assert api.revision_hash(BASE_SPEC, name=BASE_NAME) == "88f864fb03"  # the value test_api.py pins
    assert api.revision_hash(_spec(None)) == "88f864fb03"
    assert api.revision_hash(_spec(GiB)) not in ("88f864fb03", api.revision_hash(_spec(2 * GiB)))


def test_crd_field_has_the_same_bounds() -> None:
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "modeldeploy.io_modeldeployments.yaml")
                         .read_text())
    (version,) = crd["spec"]["versions"]
    source = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]["properties"]["source"]
    field = source["properties"]["maxBytes"]
    assert (field["type"], field["minimum"], field["maximum"]) == ("integer", 1, api.MAX_SOURCE_BYTES)
    assert "only lower" in field["description"]


# ---------------------------------------------------------------- the pod template


IMAGES = Images(serving="t", loader="l", converter="c", serving_backend="python-onnx", max_download_bytes=8 * GiB)


def _loader_and_volumes(max_bytes: Any, images: Images = IMAGES) -> tuple[dict[str, str], dict[str, Any]]:
    d = build_deployment(md_name=BASE_NAME, namespace="ml", owner_uid="u", spec=_spec(max_bytes), revision="r",
                         replicas=1, images=images, role="stable")
    pod = d["spec"]["template"]["spec"]
    (loader,) = [x for x in pod["initContainers"] if x["name"] == c.CONTAINER_LOADER]
    env = {e["name"]: e.get("value") for e in loader["env"]}
    return env, {v["name"]: v for v in pod["volumes"]}


def test_the_spec_can_lower_the_limit_but_never_raise_it() -> None:
    env, volumes = _loader_and_volumes(None)
    assert env["MD_MAX_DOWNLOAD_BYTES"] == str(8 * GiB)
    assert volumes["model-repository"]["emptyDir"] == {"sizeLimit": "33Gi"}  # 4 x 8 GiB + 1 GiB
    env, volumes = _loader_and_volumes(2 * GiB)
    assert env["MD_MAX_DOWNLOAD_BYTES"] == str(2 * GiB)
    assert volumes["model-repository"]["emptyDir"] == {"sizeLimit": "9Gi"}
    env, volumes = _loader_and_volumes(100 * GiB)  # more than the operator allows: the operator's limit
    assert env["MD_MAX_DOWNLOAD_BYTES"] == str(8 * GiB)
    assert volumes["model-repository"]["emptyDir"] == {"sizeLimit": "33Gi"}


def test_the_env_value_is_what_the_loader_parses() -> None:
    env, _ = _loader_and_volumes(123_456_789)
    parsed = from_sources([], {k: v for k, v in env.items() if isinstance(v, str)})
    assert parsed.max_download_bytes == 123_456_789 == max_download_bytes(_spec(123_456_789), IMAGES)


def test_every_volume_the_loader_writes_has_a_size_limit() -> None:
    d = build_deployment(md_name=BASE_NAME, namespace="ml", owner_uid="u", spec=_spec(None), revision="r",
                         replicas=1, images=IMAGES, role="stable")
    pod = d["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (loader,) = pod["initContainers"]
    written = [m["name"] for m in loader["volumeMounts"] if not m.get("readOnly")]
    assert sorted(written) == ["model-repository", "tmp"]
    for name in written:
        assert "sizeLimit" in volumes[name]["emptyDir"], name


@pytest.mark.parametrize(("n", "q"), [(GiB, "1Gi"), (3 * 2**20, "3Mi"), (2**40, "1Ti"), (1000, "1000"),
                                      (1536, "1536"), (3072, "3Ki")])
def test_quantity(n: int, q: str) -> None:
    assert quantity(n) == q


def test_repository_size_rule() -> None:
    assert repository_size_limit(10 * GiB) == "41Gi"
    assert repository_size_limit(1) == str(4 + GiB)
