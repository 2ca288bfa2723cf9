"""probe.yamlfast: rapidyaml's road gives exactly what the bounded loader gives, or
steps aside (None) - on ordinary manifests, on YAML 1.1/1.2 differences, on hostile
text. Every comparison is type-strict (``1``, ``1.0`` and ``True`` are different)."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import yamlfast, yamlfile
from probe.yamlload import Limits, YamlLoadError, load_all
from tests import hostile_yaml

LIMITS = Limits(max_bytes=1 << 24, max_depth=100)

pytestmark = pytest.mark.skipif(not yamlfast.available(), reason="rapidyaml is not installed")


def _bounded(text: str) -> list[object] | str:
    try:
        return load_all(text, LIMITS)
    except YamlLoadError as exc:
        return f"error: {exc}"


def assert_agrees(text: str, *, refusals: bool = True) -> list[object] | None:
    """The fast road's answer is None or the bounded loader's own, types included.

    ``refusals=False``: on text PyYAML refuses as malformed (``[x, a:]``, ``>3 2Y``),
    rapidyaml may read it as YAML 1.2 does; the guards catch the families seen here,
    not every malformed spelling. Valid text must always agree."""
    got = yamlfast.load_all(text, LIMITS)
    if got is not None:
        expected = _bounded(text)
        if isinstance(expected, str):
            assert not refusals, f"fast road loaded what the bounded refuses: {expected}"
        else:
            assert yamlfast._same(expected, got), (text, expected, got)
    return got


KUBECTL_LIKE = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels:
    app: web
    security.istio.io/tlsMode: istio
  annotations:
    sidecar.istio.io/status: '{"containers":["istio-proxy"]}'
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1"}}
  creationTimestamp: '2026-01-01T00:00:00Z'
  resourceVersion: '1104'
spec:
  serviceAccountName: web
  containers:
  - name: app
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    resources: {}
    args: []
  - name: istio-proxy
status:
  phase: Running
  conditions:
  - type: Ready
    status: 'True'
  podIP: 10.0.0.1
  podIPs:
  - ip: 10.0.0.1
  - ip: fd00::1
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    9090:
      mode: PERMISSIVE
    8080: {mode: DISABLE}
---
"""


def test_kubectl_output_takes_the_fast_road_with_the_same_values() -> None:
    got = assert_agrees(KUBECTL_LIKE)
    assert got is not None, "an ordinary kubectl dump must not fall back"
    assert len(got) == 3 and got[2] is None
    pa = got[1]
    assert isinstance(pa, dict)
    # Plain integer keys stay ints, as PyYAML reads them (JSON can only carry strings).
    assert list(pa["spec"]["portLevelMtls"]) == [9090, 8080]


# What `kubectl get pods -o yaml` prints (a List, managedFields with their "f:" and
# "k:{...}" keys, double-quoted timestamps and numbers as strings).
KUBECTL_LIST = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      kubectl.kubernetes.io/restartedAt: "2026-11-01T10:00:00Z"
      sidecar.istio.io/status: '{"containers":["istio-proxy"],"revision":"default"}'
    creationTimestamp: "2026-11-01T10:00:05Z"
    generateName: reviews-v1-5c8f9d6b7-
    labels:
      app: reviews
      pod-template-hash: 5c8f9d6b7
      security.istio.io/tlsMode: istio
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:labels:
            .: {}
            f:app: {}
        f:spec:
          f:containers:
            k:{"name":"reviews"}:
              .: {}
              f:ports:
                .: {}
                k:{"containerPort":9080,"protocol":"TCP"}:
                  .: {}
                  f:containerPort: {}
      manager: kube-controller-manager
      operation: Update
      time: "2026-11-01T10:00:05Z"
    name: reviews-v1-5c8f9d6b7-x2x9q
    namespace: bookinfo
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: reviews-v1-5c8f9d6b7
      uid: 0b7c8f7e-3f1a-4c1e-9d55-2f0c1f6b8a11
    resourceVersion: "184467"
    uid: 7d1c7a52-55b4-4b0e-8f6a-7e1b1c9f0d2e
  spec:
    containers:
    - image: docker.io/istio/examples-bookinfo-reviews-v1:1.20.2
      imagePullPolicy: IfNotPresent
      name: reviews
      ports:
      - containerPort: 9080
        protocol: TCP
      resources: {}
      securityContext:
        runAsUser: 1000
      terminationMessagePath: /dev/termination-log
    - args:
      - proxy
      - sidecar
      - --domain
      - $(POD_NAMESPACE).svc.cluster.local
      env:
      - name: ISTIO_META_APP_CONTAINERS
        value: reviews
      - name: PROXY_CONFIG
        value: |
          {}
      image: docker.io/istio/proxyv2:1.24.0
      name: istio-proxy
      readinessProbe:
        failureThreshold: 4
        httpGet:
          path: /healthz/ready
          port: 15021
          scheme: HTTP
        periodSeconds: 15
        timeoutSeconds: 3
    dnsPolicy: ClusterFirst
    enableServiceLinks: true
    serviceAccountName: bookinfo-reviews
    terminationGracePeriodSeconds: 30
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: "2026-11-01T10:00:09Z"
      status: "True"
      type: Ready
    hostIP: 172.18.0.3
    phase: Running
    podIP: 10.244.1.17
    podIPs:
    - ip: 10.244.1.17
    qosClass: Burstable
    startTime: "2026-11-01T10:00:05Z"
kind: List
metadata:
  resourceVersion: ""
"""


def test_kubectl_get_list_takes_the_fast_road_with_the_same_values() -> None:
    got = assert_agrees(KUBECTL_LIST)
    assert got is not None, "kubectl's own output must not fall back"
    pod = got[0]["items"][0]  # type: ignore[index]
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == 9080
    assert pod["status"]["conditions"][0]["lastProbeTime"] is None


@pytest.mark.parametrize(
    "text",
    [
        # YAML 1.1 (PyYAML) and 1.2 (rapidyaml) read these plain scalars differently
        "a: yes\n",
        "a: [on, off]\n",
        "a: 0777\n",
        "a: 0o17\n",
        "a: 1:20\n",
        "a: 1e3\n",
        "a: 1_000\n",
        "a: ~\n",
        "a: .NaN\n",
        "a: +5\n",
        "a: 0x1F\n",
        "a: 2001-12-14\n",
        "a: 2001-12-14 21:59:43.10 -5\n",
        "a: 2001-12-14\n   21:59:43.10\n",
        "a: =\n",
        "a: 08\n",
        "a: 1.5e3\n",
        "a: True\n",
        "a: NULL\n",
        '{"a":0777}\n',
        "- [x,0777]\n",
        "--- 0777\n",
        "? a\n: 1\n",
        # keys: JSON keys are strings; a quoted key is a string in both roads
        "true: a\n",
        "1.5: a\n",
        "null: a\n",
        "'9090': a\n9090: b\n",
        '9090: a\nb: {"9090": c}\n',
        '"\\x39090": a\n9090: b\n',
        "9090 : a\n",
        # duplicate keys (also across int/str spellings of one number)
        "a: 1\na: 2\n",
        "a: {b: 1, b: 2}\n",
        "1: a\ntrue: b\n",
        # constructs the bounded loader bounds or rapidyaml reads differently
        "a: &x [1]\nb: *x\n",
        "a: !!str 5\n",
        "<<: {a: 1}\nb: 2\n",
        "%YAML 1.1\n---\na: 1\n",
        "a: 1\n...\n",
        "a:\t1\n",
        "a: 1\r\nb: 2\r\n",
        "\ufeffa: 1\n",
        "a: x\u2028y\n",
        "a: x\x85y\n",
        'a: "\x01"\n',
        "a: '\x7f'\n",
        "[1]: 2\n",
        "{a: 1}: 2\n",
        "- *nope\n",
        # plain scalars that are strings in both
        "a: 10.0.0.1\nb: 1.2.3\nc: svc-1-1\nd: 48b6324d-9ffc-4280-ab2e-a2a4e120d94d\n",
        "a: nginx:1.25\nb: 'x: 0777'\nc: \"yes\"\n",
        "a: plain\n  continued 0777\n",
        "a: |\n  0777\n  yes\nb: >-\n  folded\n\n  text\n",
        "a: x # 0777\n",
        ">\n#{\n",
        "a: |\n  x\n# c\n  y\nb: 1\n",
        "a: >\n\n  # not a comment\n",
        "a: x#0777\n",
        "- a\n-\n- c\n",
        "a: 'it''s'\nb: \"q\\\"u\\tx\\u00e9\\x41\\/\"\n",
        "a: -\nb: ---x\n",
        "",
        "# only a comment\n",
        "---\n",
        "---\n---\na: 1\n",
        "- 1\n- -5\n- 0\n- 1.5\n- -0.25\n- 123456789012345678\n",
    ],
)
def test_agrees_or_steps_aside(text: str) -> None:
    assert_agrees(text)


def test_one_point_one_scalars_step_aside() -> None:
    for text in ("a: yes\n", "a: 0777\n", "a: 1:20\n", "a: 1e3\n", "a: ~\n", "9090 : a\n"):
        assert yamlfast.load_all(text, LIMITS) is None, text


def test_hostile_text_steps_aside_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    bombs = [
        hostile_yaml.billion_laughs(),
        "[" * 100_000,
        "- " * 100_000 + "x\n",
        "".join(" " * i + "- \n" for i in range(0, 2000)),
        "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "a: 1\n" * 10 + "b: [1, 2\n",
    ]
    for text in bombs:
        assert yamlfast.load_all(text, LIMITS) is None
    out, err = capfd.readouterr()
    assert out == "" and err == "", "rapidyaml's own error lines must not reach the user"


def test_many_distinct_undecided_tokens_step_aside_without_comparing_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file of distinct floats would cost ~0.1 ms each to compare through both roads
    (far more than the bounded loader): past a budget per text the road steps aside."""
    compared: list[str] = []
    real = yamlfast._compared

    def counting(token: str) -> tuple[object]:
        compared.append(token)
        return real(token)

    monkeypatch.setattr(yamlfast, "_compared", counting)
    text = "".join(f"- {1 + i / 1e7:.7f}\n" for i in range(20_000))
    assert yamlfast.load_all(text, LIMITS) is None
    assert 0 < len(compared) <= yamlfast._MAX_COMPARED


def test_many_distinct_integers_cost_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plain decimal may be a key: a file of 20,000 distinct ones is still read the
    fast way, with values and int keys as the bounded loader has them."""
    text = "".join(f"- {i}\n- {{{i}: x}}\n" for i in range(20_000))
    got = assert_agrees(text)
    assert got is not None and got[0][3] == {1: "x"}  # type: ignore[index]


def test_deeper_than_the_emitter_falls_back_to_the_bounded_limit() -> None:
    depth = 80  # above rapidyaml's 64, below the bounded loader's 100
    text = "[" * depth + "]" * depth + "\n"
    assert yamlfast.load_all(text, LIMITS) is None
    assert load_all(text, LIMITS)  # the bounded loader still takes it


def test_limits_below_the_emitter_depth_never_take_the_fast_road() -> None:
    assert yamlfast.load_all("a: 1\n", Limits(max_bytes=1 << 20, max_depth=10)) is None


def test_load_file_fast_gives_the_bounded_answer(tmp_path: Path) -> None:
    text = KUBECTL_LIKE * 100  # over FAST_MIN_CHARS
    assert len(text) >= yamlfile.FAST_MIN_CHARS
    assert yamlfast.load_all(text, LIMITS) is not None
    f = tmp_path / "dump.yaml"
    f.write_text(text)
    fast = yamlfile.load_file(f, LIMITS, single=False, fast=True)
    assert yamlfast._same(fast, load_all(text, LIMITS))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "a: 1\na: 2\n")
    with pytest.raises(YamlLoadError, match="duplicate key"):
        yamlfile.load_file(bad, LIMITS, single=False, fast=True)


# ---- property: any data PyYAML writes, in any style -------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.sampled_from(["yes", "on", "0777", "1:20", "1e3", "~", "2001-12-14", "10.0.0.1", "=", ""])
)
_keys = st.text(string.ascii_letters + "0123456789-.:", min_size=1, max_size=8) | st.integers(
    0, 70000
)
_docs = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(_docs, min_size=1, max_size=3),
    flow=st.sampled_from([None, True, False]),
    style=st.sampled_from([None, "'", '"', "|", ">"]),
    width=st.sampled_from([20, 80, 10_000]),
)
def test_any_dumped_data_agrees(
    docs: list[Any], flow: bool | None, style: str | None, width: int
) -> None:
    text = yaml.safe_dump_all(
        docs, default_flow_style=flow, default_style=style, width=width, allow_unicode=True
    )
    assert_agrees(text)


_plain = st.text(
    st.sampled_from("0123456789-+.:_eExXoObB aynotfuelsTFNYiI~=#,[]{}'\"|>@`%\\"), max_size=12
)


@settings(max_examples=400, deadline=None)
@given(
    token=_plain,
    shape=st.sampled_from(["a: {}\n", "{}: a\n", "- [x, {}]\n", "- {{k: {}}}\n", "{}\n"]),
)
def test_any_plain_token_agrees(token: str, shape: str) -> None:
    assert_agrees(shape.format(token), refusals=False)


# ---- property: structured YAML text with every kind of scalar in every position ----------

_WORDS = (
    "0 1 -1 8080 0777 1.5 1e3 1.5e+3 .5 -.5 1_000 0x1F 0o7 0b11 1:20 2001-12-14 10.0.0.1 ::1 "
    "yes no on off y n true True false null Null ~ = inf .inf -.inf .nan nan x-y v1 svc-1 "
    "48b6324d-9ffc - -- --- a,b [x] {x:1} %x @x `x a:b http://x/y?z=1 *x &x !x | > 123abc "
    "12:30:45 +1 +.5 00 09 1. 1.0.0 true_ nullx 0.1e-5 -0 +0 é 日本"
)
_ATOMS = [*_WORDS.split(" "), "", "a b", "a: b", "a #b", "2001-12-14 21:59:43.10 -5", "- x"]
_KEYS = [
    "a", "name", "8080", "9090", "true", "null", "1.5", "'8080'", '"9090"', "yes", "x y", "on",
    "~", "0777", 'k:{"a":1}', ".", "f:spec",
]  # fmt: skip


def _scalar(r: random.Random) -> str:
    atom = r.choice(_ATOMS)
    style = r.random()
    if style < 0.5:
        return str(atom)
    if style < 0.75:
        return "'" + atom.replace("'", "''") + "'"
    return '"' + atom.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flow(r: random.Random, depth: int) -> str:
    if depth > 3 or r.random() < 0.4:
        return _scalar(r)
    if r.random() < 0.5:
        return "[" + ", ".join(_flow(r, depth + 1) for _ in range(r.randint(0, 3))) + "]"
    items = (f"{r.choice(_KEYS)}: {_flow(r, depth + 1)}" for _ in range(r.randint(0, 3)))
    return "{" + ", ".join(items) + "}"


def _node(r: random.Random, depth: int, indent: int) -> str:
    x = r.random()
    if depth > 4 or x < 0.45:
        return " " + _scalar(r) + (" # t" if r.random() < 0.05 else "")
    if x < 0.6:
        return " " + _flow(r, depth)
    if x < 0.68:
        body = "\n".join(" " * indent + r.choice(_ATOMS) for _ in range(r.randint(1, 3)))
        return " " + r.choice(["|", ">", "|-", ">+", "|2"]) + "\n" + body
    return "\n" + _block(r, depth, indent)


def _block(r: random.Random, depth: int, indent: int) -> str:
    pad = " " * indent
    mapping = r.random() < 0.5
    lines = [f"{pad}{r.choice(_KEYS)}:" if mapping else f"{pad}-" for _ in range(r.randint(1, 3))]
    lines = [line + _node(r, depth + 1, indent + 2) for line in lines]
    if r.random() < 0.1:
        lines.insert(r.randint(0, len(lines)), f"{pad}# c {_scalar(r)}")
    return "\n".join(lines)


@settings(max_examples=400, deadline=None)
@given(r=st.randoms(use_true_random=False), docs=st.integers(1, 2))
def test_any_structured_text_agrees(r: random.Random, docs: int) -> None:
    assert_agrees("---\n".join(_block(r, 0, 0) + "\n" for _ in range(docs)), refusals=False)
