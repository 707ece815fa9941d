"""PromQL expressions used by the flowad dashboard and alert rules, ready to run.

``dashboard_expressions`` and ``alert_expressions`` return every PromQL string of the Grafana
dashboard / the Prometheus rule file, with Grafana template variables replaced by concrete
values so that the strings can be handed to ``promtool`` or to a real Prometheus (the
integration tests do both). Dashboard variables are always used inside regex matchers
(``model=~"$model"``), so the catch-all ``.*`` is a valid substitution for each of them.

Only the standard library and PyYAML are needed; the module imports nothing from the service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana" / "flowad-dashboard.json"
PROMETHEUS_CONFIG = HERE / "prometheus" / "prometheus.yml"
ALERTS = HERE / "prometheus" / "alerts.yml"

# Grafana's built-in interval variables -> the values a 15 s scrape interval gives them.
BUILTIN_VALUES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "15000",
}
# Any other (user-defined) variable: the value of the "All" option of a regex matcher.
DEFAULT_VARIABLE_VALUE = ".*"

# The service's custom metrics (without the _bucket/_sum/_count suffixes of histograms).
FLOWAD_METRICS: frozenset[str] = frozenset(
    {
        "flowad_records_scored_total",
        "flowad_anomalies_flagged_total",
        "flowad_zero_density_records_total",
        "flowad_requests_rejected_total",
        "flowad_score",
        "flowad_reference_score_quantile",
        "flowad_p_value",
        "flowad_drift_psi",
        "flowad_drift_ks_statistic",
        "flowad_drift_ks_pvalue",
        "flowad_window_anomaly_rate",
        "flowad_target_fpr",
        "flowad_drift_window_records",
        "flowad_model_info",
        "flowad_model_load_seconds",
        "flowad_model_load_failures_total",
    }
)
FLOWAD_HISTOGRAMS: frozenset[str] = frozenset({"flowad_score", "flowad_p_value"})

# ${var}, ${var:format}, [[var]] and $var (longest names first, so $__range_s wins).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables in ``expr``: built-in intervals by ``BUILTIN_VALUES``, names
    found in ``values`` by their value, anything else by ``.*``."""
    table = {**BUILTIN_VALUES, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return table.get(name, DEFAULT_VARIABLE_VALUE)

    return _VARIABLE.sub(replace, expr)


def load_dashboard(path: str | Path = DASHBOARD) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(
    path: str | Path = DASHBOARD, values: dict[str, str] | None = None
) -> list[str]:
    """All PromQL ``expr`` strings of the dashboard's panel targets, variables substituted,
    in panel order (hidden targets included)."""
    exprs: list[str] = []
    for panel in iter_panels(load_dashboard(path)):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr:
                exprs.append(substitute_variables(expr, values))
    return exprs


def load_rules(path: str | Path = ALERTS) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    return [rule for group in doc.get("groups", []) for rule in group.get("rules", [])]


def alert_expressions(path: str | Path = ALERTS) -> list[str]:
    """The ``expr`` of every rule (alerting and recording) in a Prometheus rule file."""
    return [" ".join(str(rule["expr"]).split()) for rule in load_rules(path)]


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"(?:\boffset|@)\s*-?[\w.]+")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (a lexical approximation that is exact
    for the expressions of this project: no ``__name__`` matchers, no subqueries)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}


def is_known_metric(name: str) -> bool:
    """True for the service's metrics (histogram series included), BentoML's and ``up``."""
    if name in FLOWAD_METRICS or name == "up" or name.startswith("bentoml_"):
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and base in FLOWAD_HISTOGRAMS


_GROUP_LABELS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*[\"'`]")


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    names = set(_MATCHER_LABEL.findall(expr))
    for group in _GROUP_LABELS.findall(expr):
        names.update(part.strip() for part in group.split(",") if part.strip())
    return names
