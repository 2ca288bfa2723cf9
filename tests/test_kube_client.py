"""The Kubernetes edge (jobs/kube) against a real localhost API server (tests/fakekube.py,
tests/fakekube_jobs.py) driven by the real ``kubernetes`` client: paging, 410 recovery,
each error answer mapped to its class and one-line message, timeouts, watches."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobs.kube import (
    APIError,
    BadResponse,
    Client,
    Conflict,
    Denied,
    Expired,
    Forbidden,
    KubeError,
    NotFound,
    NotServed,
    ServerError,
    TimedOut,
    Unauthorized,
    Unreachable,
)
from jobs.launch.cluster import Cluster
from jobs.plan.discovery import DiscoveryError
from tests import kubebuild as kb
from tests.fakekube import FakeKube
from tests.fakekube_jobs import JobKube
from tests.tlsservers import black_hole, nothing_listening, read_request, serving

PODS = "/api/v1/namespaces/shop/pods"
NAMES = [f"cart-{i}" for i in range(5)]


def _pods(kube: FakeKube) -> None:
    kube.add(kb.namespace("shop"))
    for i, n in enumerate(NAMES):
        kube.add(kb.pod(n, "shop", {"app": "cart"}, ip=f"10.0.1.{i + 1}"))
    kube.add(kb.pod("other", "shop", {"app": "other"}, ip="10.0.2.1"))


@pytest.fixture
def kube(fake_kube: FakeKube) -> FakeKube:
    _pods(fake_kube)
    return fake_kube


def _client(kube: FakeKube, **kw: Any) -> Client:
    return Client(kube.api_client(), **kw)


def _tokens(kube: FakeKube, path: str = PODS) -> list[str | None]:
    return [c.query.get("continue") for c in kube.calls if c.path == path]


def _names(items: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


# ---- paging -------------------------------------------------------------------------------


def test_pages_follow_continue_tokens_with_the_page_size(kube: FakeKube) -> None:
    c = _client(kube, page_size=2)
    got = _names(c.pages("list pods in shop", PODS, [("labelSelector", "app=cart")]))
    assert got == NAMES
    calls = [x for x in kube.calls if x.path == PODS]
    assert [x.query.get("limit") for x in calls] == ["2", "2", "2"]
    assert {x.query.get("labelSelector") for x in calls} == {"app=cart"}
    tokens = _tokens(kube)
    assert tokens[0] is None and None not in tokens[1:] and len(set(tokens[1:])) == 2


def test_list_with_version_gives_every_item_and_the_lists_version(kube: FakeKube) -> None:
    items, version = _client(kube, page_size=4).list_with_version("list pods in shop", PODS)
    assert _names(items) == [*NAMES, "other"]
    assert version.isdigit()


def test_410_mid_list_without_a_token_starts_over_without_repeats(kube: FakeKube) -> None:
    kube.expire_continues = 1  # the second page's token is too old, and no fresh one
    got = _names(_client(kube, page_size=2).pages("list pods in shop", PODS))
    assert got == [*NAMES, "other"]  # each once, in order
    assert kube.expire_continues == 0
    tokens = _tokens(kube)
    assert tokens[0] is None and tokens[1] is not None and tokens[2] is None  # restarted


def test_410_with_the_servers_token_continues_from_there(kube: FakeKube) -> None:
    kube.expire_next_continue = True
    got = _names(_client(kube, page_size=2).pages("list pods in shop", PODS))
    assert got == [*NAMES, "other"]
    tokens = _tokens(kube)
    assert None not in tokens[1:]  # continued with the fresh token: no restart


def test_410_recovery_is_bounded(kube: FakeKube) -> None:
    kube.expire_continues = 1000
    c = _client(kube, page_size=2, restarts=3)
    with pytest.raises(Expired) as err:
        list(c.pages("list pods in shop", PODS))
    assert str(err.value) == (
        f"list pods in shop: the list expired on {kube.url} (HTTP 410); run again"
    )
    assert len(_tokens(kube)) <= 2 * 4  # each try: the first page, then the expired one


def test_410_on_a_first_page_is_the_servers_answer(kube: FakeKube) -> None:
    kube.fail(PODS, 410, "gone for good")
    with pytest.raises(Expired, match=r"answered HTTP 410: gone for good$"):
        list(_client(kube).pages("list pods in shop", PODS))
    assert len(_tokens(kube)) == 1


# ---- error answers: class and one line ------------------------------------------------------


def _raises(call: Callable[[], object], cls: type[KubeError]) -> str:
    with pytest.raises(cls) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg
    assert isinstance(err.value, DiscoveryError)  # plan/run/agent catch this name
    return msg


def test_403_is_forbidden_naming_verb_resource_group_user(kube: FakeKube) -> None:
    kube.forbid("list", "pods")
    c = _client(kube)
    msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), Forbidden)
    assert msg == (
        "forbidden: system:serviceaccount:mtlsprobe:mtlsprobe may not list pods in API "
        "group '' in the namespace \"shop\"; grant list on pods (API group 'core')"
    )


def test_401_is_unauthorized(kube: FakeKube) -> None:
    kube.fail(PODS, 401, "Unauthorized")
    c = _client(kube)
    msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), Unauthorized)
    assert msg == (
        "list pods in shop: the API server rejected our credentials (401 Unauthorized): "
        "Unauthorized"
    )
    assert issubclass(Unauthorized, Denied) and issubclass(Forbidden, Denied)


def test_404_of_a_named_object_is_not_found(kube: FakeKube) -> None:
    c = _client(kube)
    path = "/api/v1/namespaces/shop/configmaps/nope"
    msg = _raises(lambda: c.get("get configmap shop/nope", path), NotFound)
    assert msg == (
        f"get configmap shop/nope: the API server at {kube.url} answered HTTP 404: "
        'configmaps "nope" not found'
    )
    with pytest.raises(NotFound) as err:
        c.get("get configmap shop/nope", path)
    assert not isinstance(err.value, NotServed)


def test_404_of_an_api_that_is_not_served_is_not_served(kube: FakeKube) -> None:
    c = _client(kube)
    path = "/apis/example.io/v1/widgets"
    msg = _raises(lambda: list(c.pages("list widgets.example.io", path)), NotServed)
    assert "answered HTTP 404: the server could not find the requested resource" in msg


def test_409_is_conflict(kube: FakeKube) -> None:
    c = _client(kube)
    body = kb.configmap("cfg", "shop", {"a": "b"})
    c.create("create configmaps in shop", "/api/v1/namespaces/shop/configmaps", body)
    msg = _raises(
        lambda: c.create("create configmaps in shop", "/api/v1/namespaces/shop/configmaps", body),
        Conflict,
    )
    assert msg == (
        f"create configmaps in shop: the API server at {kube.url} answered HTTP 409: "
        'configmaps "cfg" already exists'
    )


@pytest.mark.parametrize("code", [500, 503])
def test_5xx_is_server_error(kube: FakeKube, code: int) -> None:
    kube.fail(PODS, code, "etcdserver: request timed out")
    c = _client(kube)
    msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), ServerError)
    assert msg == (
        f"list pods in shop: the API server at {kube.url} answered HTTP {code}: "
        "etcdserver: request timed out"
    )


def test_other_4xx_is_an_api_error_with_its_code(kube: FakeKube) -> None:
    kube.fail(PODS, 429, "too many requests, please try again later")
    with pytest.raises(APIError) as err:
        list(_client(kube).pages("list pods in shop", PODS))
    assert err.value.code == 429 and type(err.value) is APIError
    assert str(err.value).endswith("answered HTTP 429: too many requests, please try again later")


def test_delete_of_a_gone_object_is_not_found(kube: FakeKube) -> None:
    c = _client(kube)
    path = "/api/v1/namespaces/shop/configmaps/gone"
    _raises(lambda: c.delete("delete configmaps gone in shop", path), NotFound)


def test_a_200_that_is_not_a_list_is_a_bad_response(kube: FakeKube) -> None:
    """A proxy's ``{}`` or a Status with 200 is not an empty list: nothing would be planned."""
    kube.fail(PODS, 200, "ok")
    c = _client(kube)
    msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), BadResponse)
    assert msg == "list pods in shop: the API server sent a body that is not a List"


def _answer(raw: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        if read_request(conn):
            conn.sendall(raw)

    return handle


def _api(url: str) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    cfg.retries = False
    return client.ApiClient(cfg)


def test_a_body_that_is_not_json_is_a_bad_response() -> None:
    body = b"<html>502 Bad Gateway</html>"
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        len(body),
        body,
    )
    with serving(_answer(raw)) as srv:
        url = f"http://{srv.endpoint}"
        c = Client(_api(url))
        msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), BadResponse)
    assert msg == f"list pods in shop: the API server at {url} sent a body that is not JSON"


# ---- no answer: unreachable, timed out ------------------------------------------------------


def test_refused_is_unreachable_naming_the_server() -> None:
    url = f"http://{nothing_listening()}"
    c = Client(_api(url), timeout=2)
    msg = _raises(lambda: list(c.pages("list pods in shop", PODS)), Unreachable)
    assert (
        msg == f"cannot reach the Kubernetes API at {url} (list pods in shop): connection refused"
    )


def test_a_hanging_server_hits_the_timeout(kube: FakeKube) -> None:
    kube.delay = 60.0  # each answer; the wait ends early when the fake stops
    c = _client(kube, timeout=0.5)
    start = time.monotonic()
    msg = _raises(lambda: c.get("get namespace shop", "/api/v1/namespaces/shop"), TimedOut)
    assert time.monotonic() - start < 30  # the 0.5 s timeout, not the 60 s answer
    assert msg == (
        f"cannot reach the Kubernetes API at {kube.url} (get namespace shop): "
        "no answer within the request timeout"
    )


def test_a_silent_server_is_timed_out_not_a_hang() -> None:
    with serving(black_hole) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=0.5)
        start = time.monotonic()
        _raises(lambda: list(c.pages("list pods in shop", PODS)), TimedOut)
    assert time.monotonic() - start < 30


# ---- watch --------------------------------------------------------------------------------


@pytest.fixture
def jobkube() -> Iterator[JobKube]:
    k = JobKube()
    k.start()
    try:
        _pods(k)
        yield k
    finally:
        k.stop()


def test_watch_gives_the_changes_after_the_version_matching_the_selector(
    jobkube: JobKube,
) -> None:
    c = _client(jobkube)
    _, version = c.list_with_version("list pods in shop", PODS, [("labelSelector", "app=cart")])
    jobkube.add(kb.pod("unrelated", "shop", {"app": "other"}))
    jobkube.add(kb.pod("cart-new", "shop", {"app": "cart"}))
    events = c.watch("watch pods in shop", PODS, [("labelSelector", "app=cart")], version, 5)
    try:
        first = next(events)
    finally:
        events.close()
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "cart-new"
    (call,) = [x for x in jobkube.calls if x.query.get("watch")]
    assert call.query == {
        "labelSelector": "app=cart",
        "watch": "true",
        "resourceVersion": version,
        "timeoutSeconds": "5",
    }


def test_watch_without_changes_ends_when_the_server_ends_it(jobkube: JobKube) -> None:
    c = _client(jobkube)
    _, version = c.list_with_version("list pods in shop", PODS)
    start = time.monotonic()
    assert list(c.watch("watch pods in shop", PODS, [], version, 1)) == []
    assert time.monotonic() - start < 20
    assert Cluster(c).wait_for_change("shop", "app=cart", version, 1) is False


def test_watch_from_a_compacted_version_is_expired(jobkube: JobKube) -> None:
    c = _client(jobkube)
    _, version = c.list_with_version("list pods in shop", PODS)
    jobkube.compacted_before = int(version) + 1
    with pytest.raises(Expired, match=r"answered HTTP 410: too old resource version"):
        list(c.watch("watch pods in shop", PODS, [], version, 5))
    # The run lists again at once: "something changed".
    assert Cluster(c).wait_for_change("shop", "app=cart", version, 5) is True


def test_watch_forbidden_is_forbidden(jobkube: JobKube) -> None:
    jobkube.forbid("watch", "pods")
    c = _client(jobkube)
    with pytest.raises(Forbidden, match=r"may not watch pods in API group '' in the namespace"):
        list(c.watch("watch pods in shop", PODS, [], "1", 5))


def test_watch_failing_is_a_server_error(jobkube: JobKube) -> None:
    jobkube.fail(PODS, 500)
    c = _client(jobkube)
    with pytest.raises(ServerError, match=r"answered HTTP 500: Internal error occurred"):
        list(c.watch("watch pods in shop", PODS, [], "1", 5))


def _chunked(*pieces: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + b"connection: close\r\n\r\n" + body + b"0\r\n\r\n"


def test_watch_events_split_across_chunks_are_joined() -> None:
    one = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "a"}}}).encode()
    two = json.dumps({"type": "DELETED", "object": {"metadata": {"name": "b"}}}).encode()
    stream = one + b"\n" + two + b"\n"
    cut = len(one) // 2
    pieces = (stream[:cut], stream[cut : len(one) + 5], stream[len(one) + 5 :])
    with serving(_answer(_chunked(*pieces))) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=2)
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in c.watch("w", PODS, [], "1", 1)]
    assert got == [("ADDED", "a"), ("DELETED", "b")]


def test_a_watch_that_goes_silent_is_bounded_by_the_read_timeout() -> None:
    """The server ignores timeoutSeconds and sends nothing: the client's read timeout
    (seconds + connect + 2) ends it with a TimedOut, not a hang."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def silent(conn: socket.socket) -> None:
        conn.settimeout(30)
        if read_request(conn):
            conn.sendall(head)
            black_hole(conn)

    with serving(silent) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=0.5)
        start = time.monotonic()
        with pytest.raises(TimedOut, match=r"^watch pods in shop: no answer within"):
            list(c.watch("watch pods in shop", PODS, [], "1", 1))
    assert time.monotonic() - start < 30


def test_a_watch_line_that_is_not_json_is_a_bad_response() -> None:
    with serving(_answer(_chunked(b"not json\n"))) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=2)
        with pytest.raises(BadResponse, match="not JSON"):
            list(c.watch("watch pods in shop", PODS, [], "1", 1))


# ---- the agent's peers (jobs.agent.sources.KubePeers) ----------------------------------------


def test_agent_peers_are_the_ready_pods_and_failures_are_one_line(kube: FakeKube) -> None:
    from jobs.agent.sources import KubePeers, SourceError

    kube.add(kb.pod("agent-a", "mtlsprobe", {"app": "agent"}))
    kube.add(kb.pod("agent-b", "mtlsprobe", {"app": "agent"}, ready=False))
    peers = KubePeers(kube.api_client(), "mtlsprobe", "app=agent")
    assert peers.agents() == ["agent-a"]
    kube.forbid("list", "pods")
    with pytest.raises(SourceError) as err:
        peers.agents()
    assert str(err.value) == (
        "listing agent pods (pods 'app=agent' in namespace mtlsprobe): forbidden: "
        "system:serviceaccount:mtlsprobe:mtlsprobe may not list pods in API group '' in the "
        "namespace \"mtlsprobe\"; grant list on pods (API group 'core')"
    )


def test_agent_peers_from_a_broken_list_are_an_error_not_fewer_peers(kube: FakeKube) -> None:
    """A 200 that is not a List would otherwise read as "no peers": this agent would
    then take every shard."""
    from jobs.agent.sources import KubePeers, SourceError

    kube.fail("/api/v1/namespaces/mtlsprobe/pods", 200, "ok")
    with pytest.raises(SourceError, match="not a List"):
        KubePeers(kube.api_client(), "mtlsprobe", "app=agent").agents()


def test_a_watch_line_without_end_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.kube import client as kube_client

    monkeypatch.setattr(kube_client, "MAX_EVENT", 100)
    with serving(_answer(_chunked(b"x" * 60, b"y" * 60))) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=2)
        with pytest.raises(BadResponse, match="sent a watch event over 100 bytes"):
            list(c.watch("watch pods in shop", PODS, [], "1", 1))


def test_a_watch_cut_mid_stream_is_unreachable() -> None:
    """The connection closes inside a chunk: an error, never a quiet "no change"."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    with serving(_answer(head + b'400\r\n{"type":')) as srv:
        c = Client(_api(f"http://{srv.endpoint}"), timeout=2)
        with pytest.raises(Unreachable, match=r"^watch pods in shop: "):
            list(c.watch("watch pods in shop", PODS, [], "1", 1))


# ---- the run's cluster edge (jobs.launch.cluster) ------------------------------------------


def test_cleanup_of_what_is_gone_already_is_quiet_and_other_failures_are_lines(
    kube: FakeKube,
) -> None:
    from jobs.launch.launcher import Launched, cleanup

    cluster = Cluster(_client(kube))
    cluster.create_configmap("shop", kb.configmap("run-cfg", "shop", {"a": "b"}))
    launched = Launched(configmaps=[("shop", "run-cfg"), ("shop", "ttl-took-it")])
    assert cleanup(cluster, launched) == []  # 404 (ttlSecondsAfterFinished, a person): fine
    assert ("DELETE", "/api/v1/namespaces/shop/configmaps/ttl-took-it") in {
        (c.method, c.path) for c in kube.calls
    }
    kube.fail("/api/v1/namespaces/shop/configmaps/x", 500, "etcd down", method="DELETE")
    (line,) = cleanup(cluster, Launched(configmaps=[("shop", "x")]))
    assert line == (
        f"could not delete configmaps shop/x: delete configmaps x in shop: the API server at "
        f"{kube.url} answered HTTP 500: etcd down"
    )
