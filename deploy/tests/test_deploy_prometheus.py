"""deploy/prometheus/: the scrape config and the alert rules pass promtool
(check config, check rules, and the rules' unit tests in alerts_test.yml),
every alert is labelled, documented in docs/RUNBOOK.md and tested both ways,
the rules use only metrics and labels the services export, and the config
scrapes the compose stack's services where they serve metrics.

promtool is $TANDEM_PROMTOOL or .tools/bin/promtool (`make .tools/bin/promtool`);
without it these checks fail rather than skip.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath
from typing import Any

import pytest

import _observe as o
import _support as s

SEVERITIES = {"critical", "warning"}


# ------------------------------------------------------------------ promtool


def test_promtool_check_config() -> None:
    """prometheus.yml, and the rule files it loads."""
    o.run_promtool("check", "config", "--lint=all", "--lint-fatal", str(o.PROMETHEUS_CONFIG))


def test_promtool_check_rules() -> None:
    o.run_promtool("check", "rules", "--lint=all", "--lint-fatal", str(o.ALERTS))


def test_promtool_test_rules() -> None:
    r = o.run_promtool("test", "rules", str(o.ALERTS_TEST))
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_fails_loudly_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing promtool is a failure that says how to get one."""
    monkeypatch.setenv(o.PROMTOOL_ENV, str(s.ROOT / "no-such-promtool"))
    with pytest.raises(pytest.fail.Exception, match=r"make \.tools/bin/promtool"):
        o.promtool()


# ------------------------------------------------------------------ alert shape


def _duration(value: str) -> float:
    return s.duration_seconds(value)


def test_alert_names_are_unique_and_cover_the_signals() -> None:
    names = [a["alert"] for a in o.alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    wanted = {
        "TandemQueueDepthGrowing",
        "TandemQueueStalled",
        "TandemJobsLate",
        "TandemRetryStorm",
        "TandemDeadLettersGrowing",
        "TandemComputeBreakerOpen",
        "TandemComputeOverloaded",
        "TandemOpWorkersGone",
        "TandemOrchestratorDown",
    }
    assert wanted <= set(names), f"missing alerts: {sorted(wanted - set(names))}"


@pytest.mark.parametrize("alert", o.alerts(), ids=lambda a: str(a["alert"]))
def test_alert_is_labelled_and_has_a_runbook_section(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert alert.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
    assert _duration(alert.get("for", "0s")) >= 60, f"{name}: for: of at least 1m (no flapping)"
    ann = alert.get("annotations") or {}
    for key in ("summary", "description", "runbook_url"):
        assert ann.get(key), f"{name}: annotation {key}"
    anchor = o.github_anchor(name)
    assert ann["runbook_url"] == f"docs/RUNBOOK.md#{anchor}", f"{name}: runbook_url"
    assert anchor in o.runbook_anchors(), f"docs/RUNBOOK.md has no section {name}"


def test_every_runbook_alert_section_is_an_alert() -> None:
    """A section named after an alert that no longer exists is stale."""
    names = {o.github_anchor(a["alert"]) for a in o.alerts()}
    stale = {a for a in o.runbook_anchors() if re.fullmatch(r"tandem[a-z]+", a) and a not in names}
    assert not stale, f"docs/RUNBOOK.md sections for unknown alerts: {sorted(stale)}"


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in o.load_yaml(o.ALERTS_TEST)["tests"]:
        for t in case.get("alert_rule_test") or []:
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {a["alert"] for a in o.alerts()}
    assert names - fires == set(), f"no test where these fire: {sorted(names - fires)}"
    assert names - quiet == set(), f"no test where these stay quiet: {sorted(names - quiet)}"
    assert (fires | quiet) <= names, f"tests of unknown alerts: {sorted((fires | quiet) - names)}"


def test_alert_tests_load_the_alert_rules() -> None:
    assert o.load_yaml(o.ALERTS_TEST)["rule_files"] == [o.ALERTS.name]


# ------------------------------------------------------------------ metrics


def test_metrics_are_read_from_both_services() -> None:
    """The source parser must see every metric the sources name, or the
    checks below would pass for the wrong reason."""
    metrics = o.exported_metrics()
    for path, source in ((o.ORCH_METRICS, "orchestrator"), (o.COMPUTE_METRICS, "compute")):
        named = set(re.findall(r'"(tandem_[a-z0-9_]+)"', path.read_text()))
        parsed = {m.name for m in metrics.values() if m.source == source}
        assert named, f"no metric names in {path}"
        assert named <= parsed, f"{path.name}: not understood: {sorted(named - parsed)}"


@pytest.mark.parametrize("rule", o.rules(), ids=lambda r: str(r.get("alert") or r.get("record")))
def test_rules_use_only_exported_metrics_and_labels(rule: dict[str, Any]) -> None:
    series = o.series_names(o.exported_metrics())
    recorded = {r["record"] for r in o.rules() if "record" in r}
    problems = o.check_expr(rule["expr"], series, recorded)
    assert not problems, "\n".join(problems)


def test_rules_name_only_scrape_jobs_of_the_config() -> None:
    jobs = {j["job_name"] for j in o.load_yaml(o.PROMETHEUS_CONFIG)["scrape_configs"]}
    for rule in o.rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule.get('alert')}: job {job} is not scraped"


# ------------------------------------------------------------------ job timeouts


def _default_job_timeout() -> float:
    config_go = (s.ROOT / "orchestrator-go" / "internal" / "config" / "config.go").read_text()
    return float(s.find(r"JobTimeout:\s*(\d+)\s*\*\s*time\.Second", config_go))


def test_timeout_records_match_the_queue_config(compose: dict[str, Any]) -> None:
    """tandem:queue_job_timeout_seconds carries deploy/orchestrator/queues.toml's
    job_timeout of every queue (the orchestrator does not export it)."""
    path = s.ROOT / compose["configs"]["orchestrator-queues"]["file"]
    default = _default_job_timeout()
    want = {
        q["name"]: s.duration_seconds(q["job_timeout"]) if "job_timeout" in q else default
        for q in tomllib.loads(path.read_text())["queue"]
    }
    got = {}
    for r in o.rules():
        if r.get("record") == "tandem:queue_job_timeout_seconds":
            got[r["labels"]["queue"]] = float(s.find(r"^vector\(([\d.]+)\)$", r["expr"].strip()))
    assert got == want, f"alerts.yml timeouts {got} != {path.name} {want}"
    late = next(a for a in o.alerts() if a["alert"] == "TandemJobsLate")
    fallback = float(s.find(r">\s*([\d.]+)\s*unless on \(queue\)", late["expr"]))
    assert fallback == default / 2, "queues without a record: half the built-in default timeout"


# ------------------------------------------------------------------ scrape config


def _metrics_port(svc: dict[str, Any], var: str) -> int:
    host, port = s.host_port_of(s.env_of(svc)[var])
    assert host == "0.0.0.0", f"{var} must listen on every interface inside the container"
    assert str(port) in [str(p) for p in svc.get("expose", [])], f"{var} port not exposed"
    return port


@pytest.mark.parametrize(
    ("job", "service", "var"),
    [
        ("tandem-orchestrator", "orchestrator", "TANDEM_ORCH_METRICS_LISTEN"),
        ("tandem-compute", "compute", "TANDEM_COMPUTE_METRICS_LISTEN"),
    ],
)
def test_scrape_jobs_reach_every_replica(
    svcs: dict[str, dict[str, Any]], job: str, service: str, var: str
) -> None:
    """DNS discovery of the compose service (every replica of --scale), on the
    port the service's metrics listen on."""
    config = o.load_yaml(o.PROMETHEUS_CONFIG)
    [scrape] = [j for j in config["scrape_configs"] if j["job_name"] == job]
    assert scrape.get("metrics_path", "/metrics") == "/metrics"
    [dns] = scrape["dns_sd_configs"]
    assert dns["type"] == "A" and dns["names"] == [service]
    assert dns["port"] == _metrics_port(svcs[service], var)


def test_config_loads_the_alert_rules() -> None:
    assert o.load_yaml(o.PROMETHEUS_CONFIG)["rule_files"] == [o.ALERTS.name]


# ------------------------------------------------------------------ compose profile


def test_prometheus_service_in_the_observe_profile(
    compose: dict[str, Any], svcs: dict[str, dict[str, Any]]
) -> None:
    prom = svcs["prometheus"]
    assert s.profiles_of(prom) == {"observe"}
    assert not prom.get("depends_on"), "Prometheus must run (and alert) while the others are down"
    files = {c["target"]: compose["configs"][c["source"]]["file"] for c in prom["configs"]}
    config_target = next(
        a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file=")
    )
    assert (s.ROOT / files[config_target]).resolve() == o.PROMETHEUS_CONFIG
    rules_target = str(PurePosixPath(config_target).parent / o.ALERTS.name)
    assert (s.ROOT / files[rules_target]).resolve() == o.ALERTS
    image_version = prom["image"].rsplit(":", 1)[1]
    assert re.fullmatch(r"v3\.\d+\.\d+", image_version), "Prometheus 3 (what promtool checks)"
