"""Helpers for the checks of the observability files (compose profile
"observe"): deploy/prometheus/ (scrape config, alert rules and their unit
tests), deploy/grafana/ (dashboard, provisioning) and docs/RUNBOOK.md.

promtool does the parsing that matters (config, rules, PromQL); this module
finds it, lists the metrics the services export (read from their sources),
and pulls metric names and label matchers out of PromQL expressions.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import _support as s

PROMETHEUS = s.DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
GRAFANA = s.DEPLOY / "grafana"
DASHBOARD = GRAFANA / "tandem.json"
RUNBOOK = s.ROOT / "docs" / "RUNBOOK.md"
ORCH_METRICS = s.ROOT / "orchestrator-go" / "internal" / "metrics" / "metrics.go"
COMPUTE_METRICS = s.ROOT / "compute-rs" / "crates" / "tandem-compute" / "src" / "metrics.rs"

PROMTOOL_ENV = "TANDEM_PROMTOOL"
PROMTOOL_DEFAULT = s.ROOT / ".tools" / "bin" / "promtool"

# Labels Prometheus adds to every scraped series (job, instance) and the one
# deploy/prometheus/prometheus.yml adds (service, from the DNS name).
TARGET_LABELS = frozenset({"job", "instance", "service"})


# ------------------------------------------------------------------ promtool


def promtool() -> Path:
    """The promtool binary: $TANDEM_PROMTOOL, else .tools/bin/promtool. Missing
    is a failure, never a skip: these checks are part of make test."""
    env = os.environ.get(PROMTOOL_ENV)
    path = Path(env) if env else PROMTOOL_DEFAULT
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"{PROMTOOL_ENV}={env}" if env else f"{PROMTOOL_DEFAULT.relative_to(s.ROOT)}"
        pytest.fail(
            f"promtool not found ({where}): run `make .tools/bin/promtool` "
            f"(or point {PROMTOOL_ENV} at a promtool binary)",
            pytrace=False,
        )
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs promtool; fails the test with its output unless it exits 0."""
    cmd = [str(promtool()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    if r.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}", pytrace=False
        )
    return r


# ------------------------------------------------------------------ exported metrics


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter, gauge, histogram
    labels: frozenset[str]
    source: str  # orchestrator, compute, prometheus


_GO_CONSTRUCTOR = re.compile(
    r"prometheus\.New(Counter|Gauge|Histogram)(Vec)?\(\s*prometheus\.\w+Opts\{\s*Name:\s*"
    r'"([a-z_:][a-z0-9_:]*)"[^}]*\}(?:,\s*\[\]string\{([^}]*)\})?',
    re.S,
)
_RS_CALL = re.compile(
    r'\b(counters|histograms|IntCounter::new|IntGauge::new|Counter::new|Gauge::new)\(\s*"'
    r'([a-z_:][a-z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*(?:,\s*(&\[[^\]]*\]|"[a-z_]+"))?',
    re.S,
)

# The Go and process collectors the orchestrator registers: the few series the
# dashboard uses from them.
_GO_COLLECTOR_SERIES = {
    "go_goroutines": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
}


def _strings(text: str) -> frozenset[str]:
    return frozenset(re.findall(r'"([a-z_]+)"', text or ""))


def exported_metrics() -> dict[str, Metric]:
    """Every metric the orchestrator and compute export, read from
    orchestrator-go/internal/metrics/metrics.go and tandem-compute's metrics.rs,
    plus `up` (Prometheus's own, per target)."""
    out: dict[str, Metric] = {}
    go = ORCH_METRICS.read_text()
    for kind, _, name, labels in _GO_CONSTRUCTOR.findall(go):
        out[name] = Metric(name, kind.lower(), _strings(labels), "orchestrator")
    if "collectors.NewGoCollector" in go and "collectors.NewProcessCollector" in go:
        for name, kind in _GO_COLLECTOR_SERIES.items():
            out[name] = Metric(name, kind, frozenset(), "orchestrator")
    kinds = {"counters": "counter", "histograms": "histogram"}
    for call, name, labels in _RS_CALL.findall(COMPUTE_METRICS.read_text()):
        kind = kinds.get(call) or ("gauge" if "Gauge" in call else "counter")
        out[name] = Metric(name, kind, _strings(labels), "compute")
    out["up"] = Metric("up", "gauge", frozenset(), "prometheus")
    return out


def series_names(metrics: dict[str, Metric]) -> dict[str, Metric]:
    """The series names a query may use: histograms as _bucket, _sum, _count."""
    out: dict[str, Metric] = {}
    for m in metrics.values():
        if m.kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[m.name + suffix] = m
        else:
            out[m.name] = m
    return out


# ------------------------------------------------------------------ PromQL


@dataclass
class Selector:
    metric: str
    labels: set[str] = field(default_factory=set)


_KEYWORDS = frozenset(
    "and or unless by without on ignoring group_left group_right offset bool atan2 inf nan".split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Tokens: a brace placeholder, a number or duration (0.99, 1e3, 15m), an
# identifier (with the "(" of a call), any other character.
_TOKEN = re.compile(r"@\d+@|\d[\w.]*(?:[eE][+-]?\d+)?|[A-Za-z_:][\w:]*(?:\s*\()?|\S")

# Grafana's built-in interval variables, as PromQL can parse them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """Replaces Grafana's interval variables; $var inside label values stays
    (it is a string to PromQL)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression: metric name and the label
    names of its matchers. Function and aggregation names, keywords, label
    lists of by/on/..., durations and numbers are not selectors."""
    text = _STRING.sub('""', expr)
    out: list[Selector] = []
    braces: dict[int, set[str]] = {}

    def keep_braces(m: re.Match[str]) -> str:
        braces[len(braces)] = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
        return f" @{len(braces) - 1}@ "

    text = re.sub(r"\{([^{}]*)\}", keep_braces, text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    prev_ident: Selector | None = None
    for tok in _TOKEN.findall(text):
        if tok.startswith("@") and tok.endswith("@"):
            labels = braces[int(tok[1:-1])]
            if prev_ident is not None:
                prev_ident.labels |= labels
            else:  # {__name__=...} or a bare {label=...} selector
                out.append(Selector("", labels))
            prev_ident = None
            continue
        prev_ident = None
        if not re.match(r"[A-Za-z_:]", tok) or tok.endswith("("):
            continue
        if tok.lower() in _KEYWORDS:
            continue
        sel = Selector(tok)
        out.append(sel)
        prev_ident = sel
    return out


def metric_names(expr: str) -> set[str]:
    return {sel.metric for sel in selectors(expr) if sel.metric}


def check_expr(expr: str, series: dict[str, Metric], recorded: set[str]) -> list[str]:
    """Problems with the metric names and matcher labels of one expression."""
    problems = []
    for sel in selectors(expr):
        if not sel.metric:
            problems.append(f"selector without a metric name: {expr!r}")
            continue
        if sel.metric in recorded:
            continue
        m = series.get(sel.metric)
        if m is None:
            problems.append(f"{sel.metric} is not exported by any service")
            continue
        allowed = m.labels | TARGET_LABELS
        if sel.metric.endswith("_bucket") and m.kind == "histogram":
            allowed |= {"le"}
        unknown = sel.labels - allowed
        if unknown:
            problems.append(
                f"{sel.metric} has no label {sorted(unknown)} (it has {sorted(m.labels)})"
            )
    return problems


# ------------------------------------------------------------------ files


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, with its group name under `_group`."""
    out = []
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            out.append({**rule, "_group": group["name"]})
    return out


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors = set()
    in_code = False
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            anchors.add(github_anchor(m.group(1)))
    return anchors
