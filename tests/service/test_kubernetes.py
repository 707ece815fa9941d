"""Serving on Kubernetes: ``deploy/kubernetes/`` and the Bento its image is made from.

- Every manifest (the base, and the GPU overlay's Deployment as its JSON patch makes it)
  validates against the Kubernetes API schemas, offline (``kubernetes-validate``); the
  PodMonitor, a Prometheus Operator CRD those schemas lack, is checked field by field.
- The manifests agree with each other and with the service: selectors, ports, the rollout
  that readiness gates, ``FLOWAD_TORCH_THREADS`` equal to the CPU limit.
- ``bentoml build`` (offline) of a promoted model gives a Bento that carries it; exported and
  served by a real ``bentoml serve`` in a fresh ``BENTOML_HOME`` with no model store, the
  Bento scores as the model does in-process, and the probe and metrics paths of the
  manifests answer there.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO, mixed_frame
from test_integration import free_port, http, stop, wait_for

from pipelines import Detector, registry
from pipelines.registry.store import save_detector
from service.bundle import bundled_tag

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = REPO / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
GPU_PATCH = DEPLOY / "overlays" / "gpu" / "gpu.yaml"
# The oldest Kubernetes release with every API used here at v1/v2 (autoscaling/v2 is GA since
# 1.23, policy/v1 since 1.21), and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
BENTOML = Path(sys.executable).with_name("bentoml")
MODEL_NAME = "k8s-bento"


def base_manifests() -> dict[str, dict[str, Any]]:
    """The base's resources by kind, from the files its kustomization lists."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((BASE / name).read_text()) for name in kustomization["resources"]]
    return {doc["kind"]: doc for doc in docs}


def json_patched(doc: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """``doc`` with RFC 6902 ``add`` operations applied, as kustomize applies the overlay's
    patch (only ``add`` is used there; anything else fails the test)."""
    doc = json.loads(json.dumps(doc))
    for op in patch:
        assert op["op"] == "add", f"unsupported patch operation {op}"
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = op["value"]
    return doc


def gpu_deployment() -> dict[str, Any]:
    return json_patched(base_manifests()["Deployment"], yaml.safe_load(GPU_PATCH.read_text()))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    docs = [doc for kind, doc in base_manifests().items() if kind != "PodMonitor"]
    assert {doc["kind"] for doc in docs} == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in [*docs, gpu_deployment()]:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_podmonitor_structure():
    """kubernetes-validate has no schemas for CRDs: the fields the Prometheus Operator reads,
    and that they point at the pods' metrics port."""
    manifests = base_manifests()
    monitor, pod = manifests["PodMonitor"], manifests["Deployment"]["spec"]["template"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "podMetricsEndpoints",
                                    "namespaceSelector", "podTargetLabels"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "flowad"  # job="flowad"
    port_names = {port["name"] for port in container({"spec": {"template": pod}})["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


@pytest.mark.skipif(not any((Path(p) / "kubectl").is_file()
                            for p in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="kubectl is not installed")
@pytest.mark.parametrize("folder", ["base", "overlays/gpu"])
def test_kustomize_renders_and_validates(folder):
    """What ``kubectl apply -k`` would send (labels, image and patch applied)."""
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / folder)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(docs) == 5
    for doc in docs:
        if doc["kind"] != "PodMonitor":
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    expected = gpu_deployment() if folder != "base" else base_manifests()["Deployment"]
    assert container(deployment)["resources"] == container(expected)["resources"]


# ------------------------------------------------------------------ conventions


def test_manifests_agree_with_each_other():
    m = base_manifests()
    deployment, pod = m["Deployment"], m["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in container(deployment)["ports"]}
    assert {port["targetPort"] for port in m["Service"]["spec"]["ports"]} <= port_names
    target = m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # the autoscaler owns the count; keeping two pods lets the budget allow one disruption
    assert "replicas" not in deployment["spec"]
    assert m["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert m["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_rollout_is_gated_by_readiness():
    """A new image (model version) takes traffic only when ready; no old pod leaves before."""
    deployment = base_manifests()["Deployment"]
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    c = container(deployment)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_torch_threads_match_the_cpu_limit():
    source = (REPO / "service" / "settings.py").read_text()
    for deployment in (base_manifests()["Deployment"], gpu_deployment()):
        c = container(deployment)
        env = {e["name"]: e["value"] for e in c["env"]}
        for name in env:
            if name.startswith("FLOWAD_"):
                assert f'"{name}"' in source, f"{name} is not a service setting"
        assert int(env["FLOWAD_TORCH_THREADS"]) == int(c["resources"]["limits"]["cpu"])
        assert c["resources"]["requests"] == {
            k: v for k, v in c["resources"]["limits"].items() if k in ("cpu", "memory")}


def test_gpu_variant_asks_for_one_gpu():
    c = container(gpu_deployment())
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container(base_manifests()["Deployment"])["resources"]["limits"]


# ------------------------------------------------------------------ the Bento


def bentoml(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run([str(BENTOML), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    """A promoted tiny model, built into a Bento offline and exported to an archive."""
    if shutil.which("uv", path=f"{BENTOML.parent}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        pytest.skip("bentoml build needs uv")
    tmp = tmp_path_factory.mktemp("bento")
    detector = Detector(exclude=["id"], target_fpr=0.05, train_options={"max_epochs": 3},
                        flow_options={"members": 1}, progress=False).fit(mixed_frame(1500))
    tag = save_detector(detector, MODEL_NAME)
    registry.promote(tag)
    # conftest's temporary BENTOML_HOME, which holds the model and its production pointer
    env = {**os.environ, "FLOWAD_MODEL": MODEL_NAME, "BENTOML_DO_NOT_TRACK": "true",
           "PATH": f"{BENTOML.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    out = bentoml("build", "--output", "tag", env=env, cwd=REPO)
    build_seconds = time.perf_counter() - started
    bento_tag = out.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    built = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    archive = tmp / "flowad.bento"
    bentoml("export", bento_tag, str(archive), env=env, cwd=tmp)
    print(f"bentoml build: {build_seconds:.1f} s; exported Bento: "
          f"{archive.stat().st_size / 2**20:.2f} MiB")
    return {"tag": tag, "detector": detector, "built": built, "archive": archive, "tmp": tmp}


@pytest.mark.slow
def test_bento_carries_the_production_model(bento):
    assert bundled_tag(bento["built"]) == bento["tag"] == registry.production_tag(MODEL_NAME)
    name, version = bento["tag"].split(":")
    with tarfile.open(bento["archive"]) as archive:
        members = {member.removeprefix("./") for member in archive.getnames()}
    model_dir = f"models/{name}/{version}"
    for file in ("model.yaml", "flow.pt", "encoder.skops", "calibration.json",
                 "detector.json", "reference.parquet", "reference.json"):
        assert f"{model_dir}/{file}" in members, f"{file} missing from the exported Bento"


@pytest.fixture(scope="module")
def served(bento):
    """``bentoml serve`` of the exported Bento, unpacked as ``bentoml containerize`` lays it
    out, with a fresh, empty ``BENTOML_HOME``: no model store and no pointer file."""
    tmp = bento["tmp"]
    unpacked, home = tmp / "unpacked", tmp / "fresh-home"
    with tarfile.open(bento["archive"]) as archive:
        archive.extractall(unpacked, filter="data")
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLOWAD_MODEL", "PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR",
                        "OMP_NUM_THREADS")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    port = free_port()
    log_path = tmp / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(BENTOML), "serve", str(unpacked), "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and http("GET", f"{base}/readyz")[0] == 200,
                 120, "bentoml serve of the Bento")
        yield {"base": base, "home": home}
    finally:
        stop(process)
        print(log_path.read_text()[-3000:])


@pytest.mark.slow
def test_built_bento_scores_without_a_model_store(bento, served):
    records = mixed_frame(50, seed=7).drop(columns=["id"])
    status, body = http("POST", f"{served['base']}/score",
                        json.loads(records.to_json(orient="records")))
    assert status == 200, body
    response = json.loads(body)
    assert response["model"] == bento["tag"]
    served_scores = [result["score"] for result in response["results"]]
    np.testing.assert_allclose(served_scores, bento["detector"].decision_function(records),
                               rtol=1e-9, atol=1e-9)
    status, body = http("GET", f"{served['base']}/model")
    assert status == 200 and json.loads(body)["production"] is True, body
    # nothing was read from, or written to, a model store of its own
    assert not any((served["home"] / "models").iterdir())


@pytest.mark.slow
def test_manifest_probe_and_metrics_paths_exist_on_the_service(served):
    m = base_manifests()
    c = container(m["Deployment"])
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert {p["containerPort"] for p in c["ports"]} == {BentoMLContainer.http.port.get()}
    paths = {c[probe]["httpGet"]["path"]
             for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths |= {e["path"] for e in m["PodMonitor"]["spec"]["podMetricsEndpoints"]}
    for path in sorted(paths):
        status, _ = http("GET", f"{served['base']}{path}")
        assert status == 200, path
    _, metrics = http("GET", f"{served['base']}/metrics")
    info = [line for line in metrics.decode().splitlines()
            if line.startswith("flowad_model_info{")]
    assert info and f'model_name="{MODEL_NAME}"' in info[0] and "model_version=" in info[0]
