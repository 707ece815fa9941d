"""Alertmanager webhook -> retraining run (stdlib only; a sketch to adapt, see README.md).

Alertmanager POSTs its webhook JSON to /alert. Each *firing* FlowadScoreDriftPSI alert of
severity "warning" starts one retraining, unless one was started less than RELAY_COOLDOWN_S
ago (default 24 h; Alertmanager's repeat_interval is the main rate limit, this is a backstop)
or, on Kubernetes, a retrain Job is still running.

Environment: RELAY_TOKEN (the Bearer token Alertmanager sends), RELAY_MODE = airflow |
kubernetes; airflow: AIRFLOW_URL, AIRFLOW_USER, AIRFLOW_PASSWORD (basic auth API backend);
kubernetes: kubectl in the image and a ServiceAccount allowed to get cronjobs and
list/create jobs in the namespace.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALERT = "FlowadScoreDriftPSI"
DAG_ID = "flowad_retrain"
CRONJOB = "flowad-retrain"
JOB_LABEL = "app.kubernetes.io/name=flowad-retrain"


def drift_alerts(payload: dict) -> list[dict]:
    """The firing, warning-severity drift alerts of an Alertmanager webhook payload."""
    return [
        alert for alert in payload.get("alerts", [])
        if alert.get("status") == "firing"
        and alert.get("labels", {}).get("alertname") == ALERT
        and alert.get("labels", {}).get("severity") == "warning"
    ]


def trigger_airflow(reason: str) -> str:
    url = os.environ["AIRFLOW_URL"].rstrip("/") + f"/api/v1/dags/{DAG_ID}/dagRuns"
    user_password = f"{os.environ['AIRFLOW_USER']}:{os.environ['AIRFLOW_PASSWORD']}"
    request = urllib.request.Request(
        url, method="POST", data=json.dumps({"conf": {}, "note": reason}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(user_password.encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["dag_run_id"]


def trigger_kubernetes(reason: str) -> str:
    active = subprocess.run(
        ["kubectl", "get", "jobs", "-l", JOB_LABEL,
         "-o", "jsonpath={.items[?(@.status.active)].metadata.name}"],
        check=True, capture_output=True, text=True).stdout.strip()
    if active:  # concurrencyPolicy: Forbid does not cover jobs created by hand
        return f"not started, {active} still running"
    name = f"{CRONJOB}-drift-{datetime.now(UTC):%Y%m%d%H%M%S}"
    subprocess.run(["kubectl", "create", "job", f"--from=cronjob/{CRONJOB}", name],
                   check=True, capture_output=True, text=True)
    subprocess.run(["kubectl", "annotate", "job", name, f"flowad/reason={reason}"],
                   check=False, capture_output=True)
    return name


class Handler(BaseHTTPRequestHandler):
    last_trigger = float("-inf")

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {os.environ['RELAY_TOKEN']}":
            self.send_response(401)
            self.end_headers()
            return
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        alerts = drift_alerts(payload)
        cooldown = float(os.environ.get("RELAY_COOLDOWN_S", 86400))
        if alerts and time.monotonic() - Handler.last_trigger > cooldown:
            reason = "drift: " + ", ".join(
                f"{a['labels'].get('model', '?')} ({a['labels'].get('job', '?')})" for a in alerts)
            kubernetes = os.environ.get("RELAY_MODE") == "kubernetes"
            # An exception sends no answer, so Alertmanager retries the notification.
            started = (trigger_kubernetes if kubernetes else trigger_airflow)(reason)
            self.log_message("%s -> %s", reason, started)
            Handler.last_trigger = time.monotonic()
        self.send_response(200)
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ.get("RELAY_PORT", 8080))), Handler).serve_forever()
