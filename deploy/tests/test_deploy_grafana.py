"""deploy/grafana/: the Tandem dashboard and its provisioning for the compose
profile "observe". Every panel's PromQL uses only metrics (and labels) the
orchestrator and compute export, as read from their sources, and parses
(promtool check rules on a scratch rules file with one recording rule per
query); the dashboard shows every exported metric, takes its data source from
a variable, and links to nothing outside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

import _observe as o
import _support as s

ROWS = ["Queues", "Latency", "Compute", "Op workers"]


def dashboard() -> dict[str, Any]:
    data = json.loads(o.DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for p in d["panels"]:
        yield p
        yield from p.get("panels") or []


def exprs(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title + refId, PromQL) of every query."""
    return [
        (f"{p['title']}/{t['refId']}", t["expr"])
        for p in panels(d)
        for t in p.get("targets") or []
        if t.get("expr")
    ]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


# ------------------------------------------------------------------ shape


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows[: len(ROWS)] == ROWS, f"rows {rows}"


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for p in panels(dashboard()):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{p['title']}: gridPos {g}"
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_data_source_is_a_variable() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for p in panels(d):
        if p["type"] in ("row", "text"):
            continue
        assert p["datasource"] == ref, f"{p['title']}: datasource"
        for t in p["targets"]:
            assert t.get("datasource", ref) == ref, f"{p['title']}/{t['refId']}: datasource"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == ref, f"variable {v['name']}: datasource"


def test_no_external_links_or_images() -> None:
    d = dashboard()
    for path, node in _walk(d):
        if path.endswith(".links"):
            assert node == [], f"{path}: links"
        if isinstance(node, str):
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", node, re.I), (
                f"{path}: external address {node!r}"
            )
            assert "![" not in node and "<img" not in node.lower(), f"{path}: image"
    for p in panels(d):
        assert p["type"] in ("row", "timeseries", "state-timeline", "stat", "text"), (
            f"{p['title']}: panel type {p['type']}"
        )


# ------------------------------------------------------------------ queries


def test_every_query_uses_exported_metrics_and_labels() -> None:
    series = o.series_names(o.exported_metrics())
    problems = []
    for where, expr in exprs(dashboard()):
        problems += [f"{where}: {p}" for p in o.check_expr(expr, series, set())]
    assert not problems, "\n".join(problems)


def test_variable_queries_use_exported_metrics_and_labels() -> None:
    series = o.series_names(o.exported_metrics())
    for v in dashboard()["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\(\s*([a-z_:][a-z0-9_:]*)\s*,\s*([a-z_]+)\s*\)", q)
        assert m, f"variable {v['name']}: {q!r}"
        metric, label = m.groups()
        assert metric in series, f"variable {v['name']}: {metric} is not exported"
        assert label in series[metric].labels, f"variable {v['name']}: {metric} has no {label}"


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": o.grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(exprs(dashboard()))
    ]
    assert rules
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    o.run_promtool("check", "rules", str(f))


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used: set[str] = set()
    for _, expr in exprs(dashboard()):
        used |= o.metric_names(expr)
    series = o.series_names(o.exported_metrics())
    shown = {series[n].name for n in used if n in series}
    missing = sorted(
        m.name
        for m in o.exported_metrics().values()
        if m.name.startswith("tandem_") and m.name not in shown
    )
    assert not missing, f"exported but on no panel: {missing}"


def test_queue_panels_follow_the_queue_variable() -> None:
    """Every query over a queue-labelled metric filters on $queue."""
    series = o.series_names(o.exported_metrics())
    for where, expr in exprs(dashboard()):
        for sel in o.selectors(expr):
            m = series.get(sel.metric)
            if m and "queue" in m.labels:
                assert 'queue=~"$queue"' in expr, f'{where}: {sel.metric} without queue=~"$queue"'


# ------------------------------------------------------------------ provisioning


def _targets(compose: dict[str, Any], svc: dict[str, Any]) -> dict[str, Path]:
    return {
        c["target"]: (s.ROOT / compose["configs"][c["source"]]["file"]).resolve()
        for c in svc["configs"]
    }


def test_grafana_service_in_the_observe_profile(
    compose: dict[str, Any], svcs: dict[str, dict[str, Any]]
) -> None:
    g = svcs["grafana"]
    assert s.profiles_of(g) == {"observe"}
    assert g["depends_on"]["prometheus"]["condition"] == "service_healthy"
    files = _targets(compose, g)
    provisioned = {
        PurePosixPath(t).parent.name: p for t, p in files.items() if "/provisioning/" in t
    }
    assert provisioned["datasources"] == (
        o.GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    )
    assert provisioned["dashboards"] == (o.GRAFANA / "provisioning" / "dashboards" / "tandem.yml")
    assert o.DASHBOARD in files.values()


def test_datasource_points_at_the_prometheus_service(svcs: dict[str, dict[str, Any]]) -> None:
    [ds] = o.load_yaml(o.GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    port = svcs["prometheus"]["ports"][0]["target"]
    assert ds["url"] == f"http://prometheus:{port}"
    assert "--config.file=/etc/prometheus/prometheus.yml" in svcs["prometheus"]["command"]
    interval = o.load_yaml(o.PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == interval, (
        "$__rate_interval follows the scrape interval"
    )


def test_dashboard_provider_loads_the_mounted_dashboard(
    compose: dict[str, Any], svcs: dict[str, dict[str, Any]]
) -> None:
    [provider] = o.load_yaml(o.GRAFANA / "provisioning" / "dashboards" / "tandem.yml")["providers"]
    assert provider["type"] == "file"
    files = _targets(compose, svcs["grafana"])
    [target] = [t for t, p in files.items() if p == o.DASHBOARD]
    assert str(PurePosixPath(target).parent) == provider["options"]["path"]
    home = s.env_of(svcs["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home in (None, target)


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_observe_ports_are_local(svcs: dict[str, dict[str, Any]], name: str) -> None:
    for port in svcs[name].get("ports") or []:
        assert port["host_ip"] == "127.0.0.1"
