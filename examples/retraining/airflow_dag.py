"""Daily retraining of the flowad detector as an Airflow 2 DAG (needs Airflow >= 2.6).

retrain (BashOperator) -> reload (POST /admin/reload on the service)

`flowad retrain` exits 0 = promoted, 3 = rejected by the promotion gate, anything else = a real
failure. ``skip_on_exit_code=3`` turns a rejection into a *skipped* retrain task: not a failure,
so no retry and no failure alert, and the reload task (trigger rule all_success) is skipped with
it, so the service is only told to reload after a promotion. Any other non-zero exit fails the
task and is retried once. The decision report is kept in ``params.report_dir``.

The worker running the retrain task needs the ``flowad`` CLI and the model store the service
reads (BENTOML_HOME on shared storage). On Kubernetes, a KubernetesPodOperator running the
``flowad:latest`` image with the volumes of ``cronjob.yaml`` does the same job.

Drift-triggered runs: ``POST /api/v1/dags/flowad_retrain/dagRuns`` (see README.md);
``max_active_runs=1`` queues them behind a running retrain instead of running two at once.
Airflow Variables: ``flowad_url`` (e.g. http://flowad:3000) and ``flowad_admin_token`` (the
service's FLOWAD_ADMIN_TOKEN; Airflow masks variables named *token* in logs).
"""

from __future__ import annotations

import logging
import urllib.request
from datetime import UTC, datetime, timedelta

from airflow import DAG
from airflow.decorators import task
from airflow.models import Variable
from airflow.operators.bash import BashOperator

log = logging.getLogger(__name__)

# Params come in through env, not into the command text: a run's conf can override params,
# and interpolating them into bash_command would let it inject shell.
RETRAIN = """
set -u
flowad retrain "$FLOWAD_DATA" --name "$FLOWAD_NAME" --report "$FLOWAD_REPORT"
rc=$?
case $rc in
  0) echo "flowad-retrain: promoted, report $FLOWAD_REPORT" ;;
  3) echo "flowad-retrain: rejected, production unchanged, report $FLOWAD_REPORT" ;;
  *) echo "flowad-retrain: failed with exit code $rc" >&2 ;;
esac
exit $rc
"""

with DAG(
    dag_id="flowad_retrain",
    schedule="@daily",
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # never two retrains writing the model store at once
    dagrun_timeout=timedelta(hours=4),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=15)},
    params={
        "data": "/data/latest.parquet",
        "name": "flowad-detector",
        "report_dir": "/reports",
        "bentoml_home": "/bentoml-store",
    },
    tags=["flowad"],
) as dag:
    retrain = BashOperator(
        task_id="retrain",
        bash_command=RETRAIN,
        env={
            "FLOWAD_DATA": "{{ params.data }}",
            "FLOWAD_NAME": "{{ params.name }}",
            "FLOWAD_REPORT": "{{ params.report_dir }}/retrain-{{ ts_nodash }}.json",
            "BENTOML_HOME": "{{ params.bentoml_home }}",
            "BENTOML_DO_NOT_TRACK": "true",
        },
        append_env=True,
        skip_on_exit_code=3,  # rejected: skip (and skip the reload), do not fail or retry
        execution_timeout=timedelta(hours=3),
    )

    @task(retries=2, retry_delay=timedelta(seconds=30))
    def reload() -> None:
        """Switch the service to the new production model now, not at its next poll."""
        request = urllib.request.Request(
            Variable.get("flowad_url").rstrip("/") + "/admin/reload",
            method="POST",
            headers={"Authorization": f"Bearer {Variable.get('flowad_admin_token')}"},
        )
        # Only this task is retried on failure, never the retrain: the promotion is done, and
        # the service also switches at its next poll (FLOWAD_RELOAD_INTERVAL).
        with urllib.request.urlopen(request, timeout=60) as response:
            log.info("reload: HTTP %s %s", response.status, response.read(500))

    retrain >> reload()
