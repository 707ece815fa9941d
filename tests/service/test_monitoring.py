"""Monitoring assets: Prometheus config and alert rules (checked and unit-tested with promtool),
the Grafana dashboard (structure, metric and label names, PromQL syntax) and provisioning."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "service" / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD = GRAFANA_DIR / "flowad-dashboard.json"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
FLEET = PROMETHEUS_DIR / "fleet.yml"
FLEET_TEST = PROMETHEUS_DIR / "fleet_test.yml"


def _load_expressions_module():
    """service/monitoring/expressions.py by file path: `service` need not be a package."""
    name = "flowad_monitoring_expressions"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MONITORING / "expressions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ex = _load_expressions_module()
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

# Labels the exporters put on the series (BentoML's, the service's) plus Prometheus' target labels
# (``namespace``: added by the Prometheus Operator's PodMonitor, deploy/kubernetes/).
KNOWN_LABELS = {
    "model",
    "model_name",
    "model_version",
    "namespace",
    "reason",
    "quantile",
    "le",
    "endpoint",
    "http_response_code",
    "service_name",
    "service_version",
    "runner_name",
    "job",
    "instance",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    return ex.load_rules(ALERTS)


def _panels(dashboard: dict) -> list[dict]:
    return list(ex.iter_panels(dashboard))


def _data_panels(dashboard: dict) -> list[dict]:
    return [p for p in _panels(dashboard) if p["type"] != "row"]


def _panel(dashboard: dict, title_part: str) -> dict:
    matches = [p for p in _data_panels(dashboard) if title_part.lower() in p["title"].lower()]
    assert len(matches) == 1, f"expected one panel titled like {title_part!r}, got {matches}"
    return matches[0]


def _exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


# ------------------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_check_config():
    out = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert "2 rule files found" in out.stdout


@needs_promtool
def test_promtool_check_rules():
    promtool("check", "rules", ALERTS.name, FLEET.name)


@needs_promtool
def test_promtool_alert_unit_tests():
    """alerts_test.yml: PSI fires after 15 min above 0.2 and not before, anomaly rate fires
    above 3x the target FPR (window gauge and counters) and not at 2-2.5x, and the others."""
    out = promtool("test", "rules", ALERTS_TEST.name)
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_fleet_rule_unit_tests():
    """fleet_test.yml: two replicas, one with calibration-like traffic and one shifted, give the
    fleet KS statistic and PSI worked out by hand; one replica without drift gives 0."""
    out = promtool("test", "rules", FLEET_TEST.name)
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_dashboard_expressions_parse_as_promql(tmp_path):
    """Every substituted dashboard expression, as a recording rule: promtool parses them."""
    exprs = ex.dashboard_expressions(DASHBOARD)
    doc = {
        "groups": [
            {
                "name": "flowad-dashboard",
                "rules": [
                    {"record": f"flowad_dashboard:expr_{i}", "expr": expr}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout


# ------------------------------------------------------------------- expressions helpers


def test_substitute_variables():
    expr = (
        'rate(x{model=~"$model", e=~"${endpoint}", f=~"[[f]]"}[$__rate_interval])'
        " + y[$__interval] + z[$__range]"
    )
    assert ex.substitute_variables(expr) == (
        'rate(x{model=~".*", e=~".*", f=~".*"}[1m]) + y[15s] + z[1h]'
    )
    assert ex.substitute_variables('a{model=~"$model"}', {"model": "m1"}) == 'a{model=~"m1"}'


def test_metric_and_label_names():
    expr = (
        "histogram_quantile(0.99, sum by (endpoint, le) "
        '(rate(bentoml_service_request_duration_seconds_bucket{endpoint=~"/score"}[1m])))'
        " / ignoring (le) group_left 3 * max by (model) (flowad_target_fpr offset 5m) and up"
    )
    assert ex.metric_names(expr) == {
        "bentoml_service_request_duration_seconds_bucket",
        "flowad_target_fpr",
        "up",
    }
    assert ex.label_names(expr) == {"endpoint", "le", "model"}
    assert ex.is_known_metric("flowad_score_bucket")
    assert not ex.is_known_metric("flowad_drift_psi_bucket")
    assert not ex.is_known_metric("flowad_scores_total")


# ------------------------------------------------------------------------------ dashboard


def test_dashboard_is_importable(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["definition"] == "label_values(flowad_model_info, model)"
    assert model["query"]["query"] == "label_values(flowad_model_info, model)"
    assert model["includeAll"] and model["allValue"] == ".*"


def test_dashboard_panels(dashboard):
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _data_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip(), f"{panel['title']}: empty expr"
            assert t["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_dashboard_uses_only_known_metrics_and_labels(dashboard):
    exprs = ex.dashboard_expressions(DASHBOARD)
    assert len(exprs) == sum(len(p["targets"]) for p in _data_panels(dashboard))
    for expr in exprs:
        names = ex.metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = {n for n in names if not ex.is_known_metric(n)}
        assert not unknown, f"unknown metrics {unknown} in {expr!r}"
        assert ex.label_names(expr) <= KNOWN_LABELS, expr
    used = set().union(*(ex.metric_names(e) for e in exprs))
    for metric in ex.FLOWAD_METRICS - ex.FLOWAD_HISTOGRAMS:
        assert metric in used, f"dashboard never shows {metric}"
    assert {"flowad_score_bucket", "flowad_p_value_bucket"} <= used


def test_dashboard_variables(dashboard):
    """Variables are all defined and only used in regex matchers, so that `.*` (All) and the
    substituted expressions are valid; nothing is left unsubstituted."""
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    raw = [t["expr"] for p in _data_panels(dashboard) for t in p["targets"]]
    for expr in raw:
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name in defined or name in ex.BUILTIN_VALUES, f"${name} in {expr!r}"
            if name in defined:
                assert re.search(rf'=~\s*"\${name}"', expr), f"${name} outside =~ in {expr!r}"
    for expr in ex.dashboard_expressions(DASHBOARD):
        assert "$" not in expr and "[[" not in expr, expr


def test_dashboard_required_panels(dashboard):
    rate = _exprs(_panel(dashboard, "anomaly rate vs target"))
    assert any("flowad_window_anomaly_rate" in e for e in rate)
    assert any(
        "rate(flowad_anomalies_flagged_total" in e and "flowad_records_scored_total" in e
        for e in rate
    )
    assert any("flowad_target_fpr" in e for e in rate)

    quantiles = " ".join(_exprs(_panel(dashboard, "score quantiles")))
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, " in quantiles
    assert "flowad_score_bucket" in quantiles and "flowad_reference_score_quantile" in quantiles

    latency = " ".join(_exprs(_panel(dashboard, "latency")))
    assert "bentoml_service_request_duration_seconds_bucket" in latency
    assert "histogram_quantile(0.5, " in latency and "histogram_quantile(0.99, " in latency
    assert "by (endpoint, le)" in latency

    errors = " ".join(_exprs(_panel(dashboard, "4xx / 5xx")))
    assert 'http_response_code=~"5.."' in errors and 'http_response_code=~"4.."' in errors
    assert "by (endpoint)" in errors

    assert "by (reason)" in " ".join(_exprs(_panel(dashboard, "rejected requests")))
    assert "flowad_records_scored_total" in " ".join(_exprs(_panel(dashboard, "records / s")))


def _threshold_values(panel: dict) -> list[float]:
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", panel["title"]
    return [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]


def test_dashboard_draws_alert_thresholds(dashboard):
    assert 0.2 in _threshold_values(_panel(dashboard, "PSI"))
    assert 0.1 in _threshold_values(_panel(dashboard, "KS statistic"))
    assert 0.01 in _threshold_values(_panel(dashboard, "KS p-value"))
    rate = _exprs(_panel(dashboard, "anomaly rate vs target"))
    assert any(e.startswith("3 * ") and "flowad_target_fpr" in e for e in rate)


def test_grafana_provisioning():
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"]
    dash = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/flowad.yml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ----------------------------------------------------------------- prometheus and alerts


def test_prometheus_config():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml", "fleet.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "flowad"  # the alerts and the dashboard select up{job="flowad"}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:3000"]


def test_alert_rules(rules):
    by_name: dict[str, list[dict]] = {}
    for rule in rules:
        assert "alert" in rule, rule
        by_name.setdefault(rule["alert"], []).append(rule)
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert {
        "FlowadScoreDriftPSI",
        "FlowadAnomalyRateHigh",
        "FlowadHighErrorRate",
        "FlowadServiceDown",
        "FlowadModelLoadFailures",
    } <= set(by_name)
    (psi,) = by_name["FlowadScoreDriftPSI"]
    assert psi["for"] == "15m" and re.search(r"flowad_drift_psi\)\s*>\s*0\.2\b", psi["expr"])
    sources = {r["labels"]["source"]: r for r in by_name["FlowadAnomalyRateHigh"]}
    assert set(sources) == {"window", "counters"}
    for rule in sources.values():
        assert (
            rule["for"] == "15m" and "3 * max by (job, model) (flowad_target_fpr)" in rule["expr"]
        )
    (errors,) = by_name["FlowadHighErrorRate"]
    assert errors["for"] == "5m" and "> 0.05" in errors["expr"]
    (down,) = by_name["FlowadServiceDown"]
    assert down["for"] == "2m" and 'up{job="flowad"} == 0' in down["expr"]


def test_alert_expressions_use_known_metrics_and_labels():
    exprs = ex.alert_expressions(ALERTS)
    assert len(exprs) == len(ex.load_rules(ALERTS))
    for expr in exprs:
        assert "$" not in expr
        unknown = {n for n in ex.metric_names(expr) if not ex.is_known_metric(n)}
        assert not unknown, f"unknown metrics {unknown} in {expr!r}"
        assert ex.label_names(expr) <= KNOWN_LABELS, expr


def test_bentoml_metric_labels_match_installed_bentoml():
    """The dashboard and alerts rely on BentoML 1.4's `bentoml_service` namespace and on the
    `endpoint` / `http_response_code` labels; read them from the installed sources (without
    importing bentoml, which is slow)."""
    spec = importlib.util.find_spec("bentoml")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bentoml is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    instruments = root / "_internal/server/http/instruments.py"
    config = root / "_internal/configuration/v2/default_configuration.yaml"
    if not instruments.is_file() or not config.is_file():
        pytest.skip("unexpected bentoml layout")
    source = instruments.read_text()
    runner = source[source.index("class RunnerTrafficMetricsMiddleware") :]
    for label in ("endpoint", "http_response_code", "service_name", "runner_name"):
        assert f'"{label}"' in runner
    for name in ("request_duration_seconds", "request_total", "request_in_progress"):
        assert f'name="{name}"' in runner
    defaults = yaml.safe_load(config.read_text())
    assert defaults["services"]["metrics"]["namespace"] == "bentoml_service"


def test_fleet_rules_use_the_services_p_value_buckets():
    """The fleet rules spell out every p-value bucket bound and its reference share: they must
    be service/metrics.py's P_VALUE_BUCKETS, formatted as prometheus_client writes ``le``."""
    from prometheus_client.utils import floatToGoString

    from service.metrics import P_VALUE_BUCKETS

    rules = {rule["record"]: " ".join(rule["expr"].split()) for rule in ex.load_rules(FLEET)}
    bounds = [floatToGoString(b) for b in P_VALUE_BUCKETS]
    cdf = re.findall(r'vector\(([\d.]+)\), "le", "([^"]+)"',
                     rules["flowad:p_value_cdf:reference_ratio"])
    assert [le for _, le in cdf] == bounds
    assert [float(value) for value, _ in cdf] == list(P_VALUE_BUCKETS)
    bins = re.findall(r'vector\(([\d.]+)\), "le", "([^"]+)"',
                      rules["flowad:p_value_bin:reference_ratio"])
    assert [le for _, le in bins] == bounds
    widths = [upper - lower for lower, upper in zip((0.0, *P_VALUE_BUCKETS[:-1]), P_VALUE_BUCKETS,
                                                    strict=True)]
    assert [float(value) for value, _ in bins] == pytest.approx(widths, abs=1e-12)
    for expr in rules.values():
        unknown = {n for n in ex.metric_names(expr)
                   if not ex.is_known_metric(n) and n not in rules}
        assert not unknown, f"unknown metrics {unknown} in {expr!r}"
        assert ex.label_names(expr) <= KNOWN_LABELS, expr
