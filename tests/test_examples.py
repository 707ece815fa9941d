"""The retraining examples (examples/retraining) parse and keep their contract with the CLI."""

import ast
import importlib.util
import subprocess

import yaml
from conftest import REPO

EXAMPLES = REPO / "examples" / "retraining"


def _load(name: str):
    return yaml.safe_load((EXAMPLES / name).read_text())


def _container(cronjob: dict) -> dict:
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def test_cronjob():
    cronjob = _load("cronjob.yaml")
    assert cronjob["apiVersion"] == "batch/v1"
    assert cronjob["kind"] == "CronJob"
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    # Exit 3 (rejected) must neither fail the Job nor be retried: the wrapper maps it to 0.
    assert all(3 not in rule.get("onExitCodes", {}).get("values", [])
               for rule in job["podFailurePolicy"]["rules"])
    container = _container(cronjob)
    script = " ".join(container["command"] + container["args"])
    assert "flowad retrain" in script
    assert "3)" in script and "/admin/reload" in script
    env = {item["name"]: item for item in container["env"]}
    assert env["BENTOML_DO_NOT_TRACK"]["value"] == "true"
    assert "secretKeyRef" in env["FLOWAD_ADMIN_TOKEN"]["valueFrom"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert env["BENTOML_HOME"]["value"] in mounts


def test_cronjob_wrapper_maps_exit_codes(tmp_path):
    """The wrapper under sh with a stub `flowad`: 0 -> 0 even when the reload call fails (the
    service switches at its next poll), 3 -> 0, 2 -> 2."""
    script = _container(_load("cronjob.yaml"))["args"][0].replace("/reports/", f"{tmp_path}/")
    env = {"PATH": "/usr/bin:/bin", "FLOWAD_URL": "http://127.0.0.1:9", "FLOWAD_ADMIN_TOKEN": "x"}
    for code, expected, line in [(0, 0, "promoted"), (3, 0, "rejected"), (2, 2, "failed")]:
        stub = f"flowad() {{ echo \"stub $*\"; return {code}; }}\n"
        result = subprocess.run(["sh", "-c", stub + script], env=env,
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == expected, result.stdout + result.stderr
        assert "stub retrain /data/latest.parquet" in result.stdout
        assert f"flowad-retrain: {line}" in result.stdout + result.stderr


def test_alertmanager_snippet():
    config = _load("alertmanager-retrain.yml")
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    routes = config["route"]["routes"]
    drift = next(route for route in routes
                 if 'alertname="FlowadScoreDriftPSI"' in route.get("matchers", []))
    assert drift["continue"] is True
    webhook = receivers[drift["receiver"]]["webhook_configs"][0]
    assert webhook["url"].endswith("/alert")
    assert all(route["receiver"] in receivers for route in routes)


def test_airflow_dag_compiles_and_skips_rejections():
    path = EXAMPLES / "airflow_dag.py"
    source = path.read_text()
    compile(source, str(path), "exec")
    assert "flowad retrain" in source
    keywords = {keyword.arg: keyword.value for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Call) for keyword in node.keywords}
    assert ast.literal_eval(keywords["skip_on_exit_code"]) == 3
    assert ast.literal_eval(keywords["dag_id"]) == "flowad_retrain"
    assert ast.literal_eval(keywords["schedule"]) == "@daily"


def test_drift_relay_selects_firing_warning_drift_alerts():
    spec = importlib.util.spec_from_file_location("drift_relay", EXAMPLES / "drift_relay.py")
    relay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(relay)

    def alert(status="firing", alertname="FlowadScoreDriftPSI", severity="warning"):
        return {"status": status, "labels": {"alertname": alertname, "severity": severity}}

    payload = {"status": "firing", "alerts": [
        alert(), alert(status="resolved"), alert(alertname="FlowadAnomalyRateHigh"),
        alert(severity="critical")]}
    assert relay.drift_alerts(payload) == [alert()]
    assert relay.drift_alerts({}) == []
