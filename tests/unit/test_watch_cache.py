"""The watch-fed cache (pure): version ordering, deletes, the model label index, relists, fallbacks.

No cluster and no network: the API server is a small in-memory fake answering `get_or_none`,
`list` and `list_with_version`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy import constants
from modeldeploy.kube.cache import CACHED_KINDS, CachedReader, NotSynced, WatchCache, relist

KIND = constants.KIND
LABEL_NAME = constants.LABEL_NAME
MANAGED = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}


def obj(name: str, rv: object = "1", *, ns: str = "ns", model: str | None = None, uid: str | None = None,
        labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}"}
    if rv is not None:
        meta["resourceVersion"] = rv
    all_labels = dict(labels or {})
    if model is not None:
        all_labels[LABEL_NAME] = model
    if all_labels:
        meta["labels"] = all_labels
    return {"metadata": meta}


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def rv_of(o: Mapping[str, Any] | None) -> object:
    assert o is not None
    return o["metadata"]["resourceVersion"]


def synced_cache(*kinds: str) -> WatchCache:
    c = WatchCache()
    for k in kinds or CACHED_KINDS:
        c.mark_synced(k)
    return c


# --- upsert: never backwards ------------------------------------------------------------------

def test_upsert_takes_newer_and_ignores_an_older_event() -> None:
    c = synced_cache("Deployment")
    assert c.upsert("Deployment", obj("d", "5"))
    assert c.upsert("Deployment", obj("d", "7"))
    assert not c.upsert("Deployment", obj("d", "6"))  # arrived late: older than what is held
    assert rv_of(c.get_or_none("Deployment", "ns", "d")) == "7"


def test_upsert_accepts_an_equal_version() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "5", labels={"x": "old"}))
    assert c.upsert("Deployment", obj("d", "5", labels={"x": "new"}))
    got = c.get_or_none("Deployment", "ns", "d")
    assert got is not None and got["metadata"]["labels"] == {"x": "new"}


@pytest.mark.parametrize(("held", "new"), [("5", "abc"), ("abc", "3"), ("5", None), (None, "3")])
def test_upsert_accepts_an_unparsable_version(held: object, new: object) -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", held, labels={"v": "held"}))
    assert c.upsert("Deployment", obj("d", new, labels={"v": "new"}))
    got = c.get_or_none("Deployment", "ns", "d")
    assert got is not None and got["metadata"]["labels"] == {"v": "new"}


def test_upsert_of_a_kind_not_held_is_refused() -> None:
    c = WatchCache(kinds=("Deployment",))
    assert not c.holds("Pod")
    assert not c.upsert("Pod", obj("p"))
    with pytest.raises(NotSynced):
        c.get_or_none("Pod", "ns", "p")
    with pytest.raises(NotSynced):
        c.list("Pod", "ns")


def test_same_name_in_two_namespaces_are_two_objects() -> None:
    c = synced_cache("Service")
    c.upsert("Service", obj("s", "9", ns="a"))
    c.upsert("Service", obj("s", "2", ns="b"))  # older than a/s, but not the same object
    assert rv_of(c.get_or_none("Service", "a", "s")) == "9"
    assert rv_of(c.get_or_none("Service", "b", "s")) == "2"
    assert c.size()["Service"] == 2


# --- remove (DELETED events) ------------------------------------------------------------------

def test_remove_drops_the_object_and_its_index_entry() -> None:
    c = synced_cache("Pod")
    c.upsert("Pod", obj("p", "5", model="m"))
    c.remove("Pod", obj("p", "6", model="m"))
    assert c.get_or_none("Pod", "ns", "p") is None
    assert c.list("Pod", "ns", {LABEL_NAME: "m"}) == []
    assert c.size()["Pod"] == 0


def test_remove_keeps_a_newer_object_with_the_same_name_and_another_uid() -> None:
    c = synced_cache("Pod")
    c.upsert("Pod", obj("p", "5", uid="old", model="m"))
    c.upsert("Pod", obj("p", "9", uid="new", model="m"))  # recreated before the DELETED event arrived
    c.remove("Pod", obj("p", "6", uid="old", model="m"))
    got = c.get_or_none("Pod", "ns", "p")
    assert got is not None and got["metadata"]["uid"] == "new"
    assert names(c.list("Pod", "ns", {LABEL_NAME: "m"})) == ["p"]


def test_remove_of_the_same_uid_drops_even_with_an_older_version() -> None:
    c = synced_cache("Pod")
    c.upsert("Pod", obj("p", "9", uid="u"))
    c.remove("Pod", obj("p", "6", uid="u"))  # the same object: whatever its version, it is gone
    assert c.get_or_none("Pod", "ns", "p") is None


def test_remove_of_something_not_held_is_harmless() -> None:
    c = synced_cache("Pod")
    c.remove("Pod", obj("ghost", "3"))
    c.remove("NotAKind", obj("ghost", "3"))
    assert c.size()["Pod"] == 0


# --- the label index and list() ---------------------------------------------------------------

def test_list_by_model_label_returns_exactly_that_models_objects() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("m1-a", model="m1"))
    c.upsert("Deployment", obj("m1-b", model="m1"))
    c.upsert("Deployment", obj("m2-a", model="m2"))
    c.upsert("Deployment", obj("m1-other-ns", ns="other", model="m1"))
    c.upsert("Deployment", obj("unlabelled"))
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m1"})) == ["m1-a", "m1-b"]
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m2"})) == ["m2-a"]
    assert names(c.list("Deployment", "other", {LABEL_NAME: "m1"})) == ["m1-other-ns"]
    assert c.list("Deployment", "ns", {LABEL_NAME: "nope"}) == []


def test_relabelled_object_leaves_its_old_model_index() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "1", model="m1"))
    c.upsert("Deployment", obj("d", "2", model="m2"))
    assert c.list("Deployment", "ns", {LABEL_NAME: "m1"}) == []
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m2"})) == ["d"]
    c.upsert("Deployment", obj("d", "3"))  # label removed altogether
    assert c.list("Deployment", "ns", {LABEL_NAME: "m2"}) == []
    assert names(c.list("Deployment", "ns")) == ["d"]


def test_an_ignored_older_event_does_not_touch_the_index() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "5", model="m2"))
    c.upsert("Deployment", obj("d", "4", model="m1"))  # stale: ignored
    assert c.list("Deployment", "ns", {LABEL_NAME: "m1"}) == []
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m2"})) == ["d"]


def test_list_with_extra_labels_filters() -> None:
    c = synced_cache("Pod")
    c.upsert("Pod", obj("p1", model="m", labels={"rev": "a"}))
    c.upsert("Pod", obj("p2", model="m", labels={"rev": "b"}))
    c.upsert("Pod", obj("p3", model="x", labels={"rev": "a"}))
    assert names(c.list("Pod", "ns", {LABEL_NAME: "m", "rev": "a"})) == ["p1"]
    assert names(c.list("Pod", "ns", {"rev": "a"})) == ["p1", "p3"]  # no model label: a scan
    assert c.list("Pod", "ns", {LABEL_NAME: "m", "rev": "zzz"}) == []


def test_list_without_namespace_spans_namespaces() -> None:
    c = synced_cache(KIND, "Pod")
    c.upsert(KIND, obj("a", ns="n1"))
    c.upsert(KIND, obj("b", ns="n2"))
    assert names(c.list(KIND, None)) == ["a", "b"]
    assert names(c.list(KIND, "n1")) == ["a"]
    c.upsert("Pod", obj("p1", ns="n1", model="m"))
    c.upsert("Pod", obj("p2", ns="n2", model="m"))
    c.upsert("Pod", obj("p3", ns="n2", model="other"))
    assert names(c.list("Pod", None, {LABEL_NAME: "m"})) == ["p1", "p2"]


# --- synced / NotSynced -----------------------------------------------------------------------

def test_reads_before_mark_synced_raise_not_synced() -> None:
    c = WatchCache()
    c.upsert("Pod", obj("p"))  # events may arrive before the first LIST
    assert not c.synced("Pod")
    with pytest.raises(NotSynced):
        c.get_or_none("Pod", "ns", "p")
    with pytest.raises(NotSynced):
        c.list("Pod", "ns")
    assert c.fallbacks == 2 and c.hits == 0
    c.mark_synced("Pod")
    assert c.synced("Pod")
    assert c.get_or_none("Pod", "ns", "p") is not None
    assert c.hits == 1
    with pytest.raises(NotSynced):  # synced is per kind
        c.list("Deployment", "ns")


# --- replace (a relist) -----------------------------------------------------------------------

def test_replace_removes_objects_missing_from_the_list() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("kept", "5", model="m"))
    c.upsert("Deployment", obj("gone", "6", model="m"))  # deleted while a watch was down
    c.replace("Deployment", "ns", [obj("kept", "5", model="m")], 10)
    assert names(c.list("Deployment", "ns")) == ["kept"]
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m"})) == ["kept"]


def test_replace_keeps_objects_newer_than_the_list() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("created-after-list", "12", model="m"))
    c.replace("Deployment", "ns", [], 10)
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "m"})) == ["created-after-list"]


def test_replace_without_a_list_version_removes_everything_missing() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "12"))
    c.replace("Deployment", "ns", [], None)
    assert c.list("Deployment", "ns") == []


def test_replace_keeps_a_newer_held_version_over_an_older_listed_one() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "12", model="new"))
    c.replace("Deployment", "ns", [obj("d", "8", model="old")], 10)
    assert rv_of(c.get_or_none("Deployment", "ns", "d")) == "12"
    assert c.list("Deployment", "ns", {LABEL_NAME: "old"}) == []
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "new"})) == ["d"]


def test_replace_takes_a_newer_listed_version_and_reindexes() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "3", model="old"))
    c.replace("Deployment", "ns", [obj("d", "8", model="new"), obj("e", "9", model="new")], 10)
    assert rv_of(c.get_or_none("Deployment", "ns", "d")) == "8"
    assert c.list("Deployment", "ns", {LABEL_NAME: "old"}) == []
    assert names(c.list("Deployment", "ns", {LABEL_NAME: "new"})) == ["d", "e"]


def test_replace_in_one_namespace_leaves_the_others_alone() -> None:
    c = synced_cache("Service")
    c.upsert("Service", obj("s", "3", ns="a"))
    c.upsert("Service", obj("s", "3", ns="b"))
    c.replace("Service", "a", [], 10)
    assert c.get_or_none("Service", "a", "s") is None
    assert c.get_or_none("Service", "b", "s") is not None
    c.replace("Service", None, [obj("t", "4", ns="c")], 10)  # all namespaces
    assert names(c.list("Service", None)) == ["t"]


def test_replace_does_not_resurrect_an_object_deleted_after_the_list() -> None:
    c = synced_cache("Deployment")
    c.upsert("Deployment", obj("d", "5", model="m"))
    # The relist's LIST is answered at revision 10 and holds d; before its result reaches replace(),
    # the watch delivers d's deletion (revision 11).
    listed = [obj("d", "5", model="m")]
    c.remove("Deployment", obj("d", "11", model="m"))
    c.replace("Deployment", "ns", listed, 10)
    assert c.get_or_none("Deployment", "ns", "d") is None


def test_an_older_upsert_after_a_delete_does_not_resurrect() -> None:
    c = synced_cache(KIND)
    c.upsert(KIND, obj("m", "5"))
    c.remove(KIND, obj("m", "9"))  # the watch: deleted at revision 9
    c.upsert(KIND, obj("m", "7"))  # a status write's response (revision 7) upserted afterwards
    assert c.get_or_none(KIND, "ns", "m") is None


# --- CachedReader -----------------------------------------------------------------------------

class FakeApi:
    """The API server's reads, counted."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.gets: list[tuple[str, str | None, str]] = []
        self.lists: list[tuple[str, str | None, dict[str, str] | None]] = []

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.gets.append((kind, namespace, name))
        return self.objects.get((kind, namespace or "", name))

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        self.lists.append((kind, namespace, dict(labels) if labels is not None else None))
        return [o for (k, ns, _), o in self.objects.items()
                if k == kind and (namespace is None or ns == namespace)]


def test_reader_falls_back_to_the_api_when_not_synced() -> None:
    api = FakeApi({("Deployment", "ns", "d"): obj("d", "1", labels={"from": "api"})})
    cache = WatchCache()
    cache.upsert("Deployment", obj("d", "1", labels={"from": "cache"}))
    reader = CachedReader(cache, api)
    got = reader.get_or_none("Deployment", "ns", "d")
    assert got is not None and got["metadata"]["labels"] == {"from": "api"}
    assert names(reader.list("Deployment", "ns", {LABEL_NAME: "m"})) == ["d"]
    assert api.gets == [("Deployment", "ns", "d")]
    assert api.lists == [("Deployment", "ns", {LABEL_NAME: "m"})]


def test_reader_falls_back_for_a_kind_the_cache_does_not_hold() -> None:
    api = FakeApi({("Lease", "ns", "l"): obj("l")})
    reader = CachedReader(WatchCache(), api)
    assert reader.get_or_none("Lease", "ns", "l") is not None
    assert reader.list("Lease", "ns") != []


def test_reader_serves_synced_kinds_from_the_cache_without_api_calls() -> None:
    api = FakeApi()
    cache = synced_cache()
    cache.upsert(KIND, obj("m", "3"))
    cache.upsert("Deployment", obj("d", "3", model="m"))
    reader = CachedReader(cache, api)
    assert reader.get_or_none(KIND, "ns", "m") is not None
    assert reader.get_or_none("Deployment", "ns", "d") is not None
    assert names(reader.list("Deployment", "ns", {LABEL_NAME: "m"})) == ["d"]
    assert reader.list("Pod", "ns", {LABEL_NAME: "m"}) == []  # synced and empty: no API list
    assert api.gets == [] and api.lists == []


def test_reader_reads_the_api_for_a_child_missing_from_the_cache() -> None:
    users = obj("d", "4", labels={"owner": "a-user"})  # same name, not ours: the watch never saw it
    api = FakeApi({("Deployment", "ns", "d"): users})
    reader = CachedReader(synced_cache(), api)
    assert reader.get_or_none("Deployment", "ns", "d") is users
    assert reader.get_or_none("Service", "ns", "nothing") is None
    assert api.gets == [("Deployment", "ns", "d"), ("Service", "ns", "nothing")]


def test_reader_does_not_read_the_api_for_a_missing_model() -> None:
    api = FakeApi({(KIND, "ns", "m"): obj("m")})
    reader = CachedReader(synced_cache(), api)
    assert reader.get_or_none(KIND, "ns", "m") is None
    assert api.gets == []


# --- relist() ---------------------------------------------------------------------------------

class FakeKube:
    """`list_with_version` over per-(kind, namespace) contents, recording each call."""

    def __init__(self, contents: dict[tuple[str, str | None], list[dict[str, Any]]], version: int | None = 100,
                 ) -> None:
        self.contents = contents
        self.version = version
        self.calls: list[tuple[str, str | None, dict[str, str] | None]] = []

    def list_with_version(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
                          ) -> tuple[list[dict[str, Any]], int | None]:
        self.calls.append((kind, namespace, dict(labels) if labels is not None else None))
        return list(self.contents.get((kind, namespace), [])), self.version


def test_relist_lists_children_by_managed_by_and_models_without_labels() -> None:
    kube = FakeKube({
        (KIND, "a"): [obj("m", "5", ns="a")],
        ("Deployment", "a"): [obj("m-1", "6", ns="a", model="m")],
        ("Pod", "b"): [obj("m-1-x", "7", ns="b", model="m"), obj("m-1-y", "8", ns="b", model="m")],
    })
    cache = WatchCache()
    assert relist(cache, kube, ["a", "b"]) == 4
    assert sorted(kube.calls, key=str) == sorted(
        [(k, ns, None if k == KIND else MANAGED) for k in CACHED_KINDS for ns in ("a", "b")], key=str)
    for kind in CACHED_KINDS:
        assert cache.synced(kind)
    assert names(cache.list(KIND, None)) == ["m"]
    assert names(cache.list("Deployment", "a", {LABEL_NAME: "m"})) == ["m-1"]
    assert names(cache.list("Pod", "b", {LABEL_NAME: "m"})) == ["m-1-x", "m-1-y"]
    assert cache.list("Service", None) == []


def test_relist_cluster_wide_and_again_removes_what_went_away() -> None:
    kube = FakeKube({(KIND, None): [obj("m1", "5", ns="a"), obj("m2", "6", ns="b")]})
    cache = WatchCache()
    assert relist(cache, kube, [None]) == 2
    assert {c[1] for c in kube.calls} == {None}
    assert names(cache.list(KIND, None)) == ["m1", "m2"]
    kube.contents = {(KIND, None): [obj("m2", "6", ns="b")]}
    kube.version = 200
    assert relist(cache, kube, [None]) == 1
    assert names(cache.list(KIND, None)) == ["m2"]


def test_relist_with_a_one_shot_iterable_lists_every_kind() -> None:
    kube = FakeKube({("Pod", "a"): [obj("p", "5", ns="a", model="m")]})
    cache = WatchCache()
    relist(cache, kube, iter(["a"]))
    assert names(cache.list("Pod", "a")) == ["p"]
