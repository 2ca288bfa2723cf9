"""The Grafana dashboard (k8s/overlays/continuous/grafana-dashboard.json) queries only
what an agent really exports: a real agent probes a real TLS server and a plaintext
liar made here, its /metrics is scraped, and every metric and label name in every
PromQL query (panels and template variables) must be in that scrape. The example alerts
(prometheusrule.yaml) are held to the same rule."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.agenthelp import (
    ECHO_ID,
    scrape_two_rounds,
)
from tests.tlsservers import MeshPKI

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "k8s" / "overlays" / "continuous" / "grafana-dashboard.json"
RULES = ROOT / "k8s" / "overlays" / "continuous" / "prometheusrule.yaml"
# Labels Prometheus adds when it scrapes (not the agent's own).
SCRAPE_LABELS = {"instance", "job", "pod", "namespace", "node", "container"}
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "increase",
    "rate",
    "irate",
    "time",
    "vector",
    "sort",
    "sort_desc",
    "label_values",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
    "clamp_max",
    "histogram_quantile",
    "delta",
    "deriv",
    "changes",
    "resets",
}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """metric sample name -> its label names, from a real agent's /metrics."""
    tmp = tmp_path_factory.mktemp("grafana")
    pki = MeshPKI(tmp)
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    status, text = scrape_two_rounds(tmp, pki, issued)
    assert status == 200
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def _exprs(obj: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and template variable queries."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            promql = k in ("expr", "definition") or (k == "query" and "(" in str(v))
            if promql and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _exprs(v)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to."""
    labels: set[str] = set()
    text = expr.replace("$__rate_interval", "5m")
    for block in _MATCHERS.findall(_STRING.sub('""', text)):
        labels.update(m.group(1) for m in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for group in _GROUPING.findall(text):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    m = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)", text.strip())
    if m:
        return {m.group(1)}, {m.group(2)}
    bare = _GROUPING.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", text)))
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range selectors
    metrics = {
        t for t in _IDENT.findall(bare) if t not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", t)
    }
    return metrics, labels


def test_the_parser_sees_metrics_and_labels() -> None:
    metrics, labels = names_in(
        'sum by (a, b) (increase(m_total{c="x", d=~"$v"}[$__rate_interval])) or vector(0)'
    )
    assert metrics == {"m_total"} and labels == {"a", "b", "c", "d"}
    assert names_in("time() - max by (k) (g)") == ({"g"}, {"k"})
    assert names_in("label_values(m_total, ns)") == ({"m_total"}, {"ns"})


def test_every_dashboard_query_uses_what_the_agent_exports(scrape: dict[str, set[str]]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dash))
    assert len(exprs) >= 15
    used: set[str] = set()
    all_labels = set().union(*scrape.values()) | SCRAPE_LABELS
    for expr in exprs:
        metrics, labels = names_in(expr)
        assert metrics, expr
        for m in metrics:
            assert m in scrape, f"{m} (in {expr!r}) is not exported by the agent"
            # A matcher on a label the metric does not carry selects nothing.
        for label in labels:
            assert label in all_labels, f"label {label} (in {expr!r}) is on no exported metric"
        used |= metrics
    # The issue's panels: verdicts by check and namespace, round duration, cert expiry,
    # agents ready.
    assert {
        "mtlsprobe_checks_total",
        "mtlsprobe_agent_round_duration_seconds",
        "mtlsprobe_peer_cert_expiry_seconds",
        "mtlsprobe_agent_ready",
    } <= used


def test_matchers_only_name_labels_their_metric_carries(scrape: dict[str, set[str]]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    for expr in _exprs(dash):
        for m in re.finditer(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", _STRING.sub('""', expr)):
            metric, block = m.group(1), m.group(2)
            for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block):
                assert label in scrape[metric] | SCRAPE_LABELS, (metric, label, expr)


def test_the_example_alerts_use_exported_metrics(scrape: dict[str, set[str]]) -> None:
    doc = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        metrics, _ = names_in(str(expr))
        assert metrics and metrics <= set(scrape), expr


def test_dashboard_is_importable_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"
