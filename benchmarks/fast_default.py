"""Is the default detector fast enough? Four ratios from one interleaved run, and a Pareto plot.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/fast_default.py [--rows scoring,fit,http,demo]
[--rounds 5] [--datasets 6_cardio,32_shuttle] [--candidates DIR] [--plot-only]``.

Rows of the table (A / B, each side measured ``--rounds`` times as A B A B ..., medians):

- **scoring**: in-process scoring rows/s of the default detector (``pipelines.Detector()`` with
  the defaults of the checkout, trained on the protocol's training split, seed 0, the rows as a
  DataFrame ``f0..f{d-1}`` as ``flowad benchmark`` hands them over) over
  ``IsolationForest(n_estimators=100, n_jobs=1)`` on the same rows; both score the test rows,
  each measurement repeating calls for at least ``min_scoring_seconds``. Target >= 1.0x.
- **fit**: seconds of the full ``Detector().fit`` (calibration included) over
  ``IsolationForest(100).fit`` on the same rows. Target <= 30x on ``6_cardio``; other datasets
  reported. The last fitted detector is the one the scoring row scores (rows run fit first).
  ``32_shuttle``'s default fit takes about 8 minutes on a quiet core: five rounds are 40 min.
- **http**: single-record ``POST /score`` p50 of flowad's service (the default detector trained
  on ``examples/data/transactions.csv`` as ``scripts/demo.sh`` trains it, promoted in a
  temporary model store, ``bentoml serve .`` with ``FLOWAD_SCORING=local``) over the p50 of
  ``benchmarks/trivial_service`` (a BentoML service answering a constant verdict per record in
  the same shape). Both servers run at once, each under ``setsid``, with the same environment;
  one client sends the same ``{"records": [one record]}`` bodies in alternating blocks of
  ``http_requests``. Target <= 1.5x.
- **demo**: seconds from ``bash scripts/demo.sh`` in a fresh ``git clone`` of the committed
  checkout (fresh ``BENTOML_HOME``, a free ``PORT``) until ``GET /readyz`` answers 200; its
  ``.venv`` links to this checkout's, with the stamp ``setup-venv.sh`` writes for the clone's
  ``pyproject.toml``, so the script checks and installs nothing (and never into a shared
  environment). Target <= 60 s on a quiet machine.

Every process runs one torch / OpenMP thread. Prints the table (target, ratio, raw medians,
PASS/FAIL), writes the numbers as JSON (``--output``) and the Pareto plot (``--plot``): mean
ROC-AUC over the 14 datasets against median scoring rows/s and against total fit seconds, one
point per complete benchmark result (``results/flowad-*.csv``, ``results/levers/*.csv``,
``--candidates DIR/*.csv``: 14 datasets x 3 seeds; incomplete ones are listed, not plotted) and
the ten bundled baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy, torch and scikit-learn load; children too

import httpx
import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"
WORK = Path(tempfile.mkdtemp(prefix="flowad-fast-default-"))
os.environ["BENTOML_HOME"] = str(WORK / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

from pipelines import Detector  # noqa: E402
from pipelines.evaluation import protocol  # noqa: E402 - BENTOML_HOME must be set first
from pipelines.io.labels import parse_labels  # noqa: E402
from pipelines.io.tables import read_table  # noqa: E402
from pipelines.registry.promotion import promote  # noqa: E402
from pipelines.registry.store import save_detector  # noqa: E402

ROWS = ("scoring", "fit", "http", "demo")
EXAMPLE_DATA = REPO / "examples/data/transactions.csv"
EXAMPLE_ID, EXAMPLE_LABEL = "transaction_id", "is_fraud"  # as scripts/demo.sh: excluded
MODEL_NAME = "flowad-fast-default"
TRIVIAL_SERVICE = REPO / "benchmarks/trivial_service"
JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Config:
    rows: tuple[str, ...] = ROWS
    rounds: int = 5
    datasets: tuple[str, ...] = ("6_cardio", "32_shuttle")  # scoring and fit rows
    gated_fit_dataset: str = "6_cardio"  # the fit target applies here; others are reported
    data_dir: Path = REPO.parent / "shared/data/adbench"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # Detector options of a candidate
    candidates: Path | None = None
    output: Path = RESULTS / "fast_default.json"
    plot: Path = RESULTS / "fast_default_pareto.png"
    plot_only: bool = False
    min_scoring_seconds: float = 1.0  # one scoring measurement: calls for at least this long
    http_requests: int = 200  # requests per block, one block per server per round
    http_bodies: int = 64  # distinct single-record bodies, sent in the same order to both
    http_warmup: int = 50  # requests per server before the first block
    ready_timeout: float = 300.0
    demo_timeout: float = 1200.0


@dataclass(frozen=True)
class Target:
    text: str
    limit: float | None  # None: reported, no target
    at_least: bool  # True: measured >= limit passes; False: <= limit passes

    def verdict(self, measured: float) -> str:
        if self.limit is None or not np.isfinite(measured):
            return "reported" if np.isfinite(measured) else "n/a"
        ok = measured >= self.limit if self.at_least else measured <= self.limit
        return "PASS" if ok else "FAIL"


@dataclass
class Result:
    """One row of the table: ``measured`` is the ratio of the medians (or seconds, for the
    demo); ``a`` and ``b`` are the raw measurements of each side."""

    row: str
    what: str
    target: Target
    unit: str
    a_name: str
    a: list[float]
    b_name: str = ""
    b: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def a_median(self) -> float:
        return float(np.median(self.a)) if self.a else float("nan")

    @property
    def b_median(self) -> float:
        return float(np.median(self.b)) if self.b else float("nan")

    @property
    def measured(self) -> float:
        return self.a_median / self.b_median if self.b else self.a_median

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "a_median": self.a_median, "b_median": self.b_median,
                "measured": self.measured, "verdict": self.target.verdict(self.measured)}


def interleave(a: Callable[[], float], b: Callable[[], float],
               rounds: int) -> tuple[list[float], list[float]]:
    """A B A B ...: ``rounds`` measurements of each side, alternating."""
    xs, ys = [], []
    for i in range(rounds):
        xs.append(a())
        ys.append(b())
        print(f"  round {i + 1}/{rounds}: {xs[-1]:,.4g} / {ys[-1]:,.4g}", flush=True)
    return xs, ys


# ----------------------------------------------------------------------------- in process
@dataclass(frozen=True)
class ProtocolData:
    """A dataset split as the protocol splits it: standardised train and test rows."""

    name: str
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def load(cls, cfg: Config, name: str) -> ProtocolData:
        X, y = protocol.load_npz(cfg.data_dir / f"{name}.npz")
        train, _, test, _ = protocol.split(y, cfg.seed)
        scaler = StandardScaler().fit(X[train])
        return cls(name, scaler.transform(X[train]), scaler.transform(X[test]))


def default_detector(cfg: Config) -> Detector:
    """The default detector of this checkout (no architecture given here), seeded; with
    ``--options``, a candidate configuration instead."""
    return Detector(random_state=cfg.seed, **cfg.options)


def isolation_forest(cfg: Config) -> IsolationForest:
    return IsolationForest(n_estimators=100, n_jobs=1, random_state=cfg.seed)


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def rows_per_second(score: Callable[[], object], n_rows: int, min_seconds: float) -> float:
    """Rows/s of ``score`` (on ``n_rows`` rows), repeated for at least ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or calls == 0:
        score()
        calls += 1
    return calls * n_rows / elapsed


def fit_row(cfg: Config, data: ProtocolData, fitted: dict[str, Detector]) -> Result:
    """Default ``Detector().fit`` seconds vs ``IsolationForest(100).fit`` on the same rows."""
    def fit_default() -> float:
        detector = default_detector(cfg)
        took = seconds(lambda: detector.fit(data.train))
        fitted[data.name] = detector
        return took

    print(f"fit, {data.name} ({len(data.train)} rows): default / IsolationForest seconds",
          flush=True)
    a, b = interleave(fit_default, lambda: seconds(lambda: isolation_forest(cfg).fit(data.train)),
                      cfg.rounds)
    limit = 30.0 if data.name == cfg.gated_fit_dataset else None
    return Result("fit", f"fit s, default / IsolationForest(100), {data.name}",
                  Target(f"<= {limit:g}x" if limit else "reported", limit, at_least=False),
                  "s", "default", a, "IsolationForest", b)


def scoring_row(cfg: Config, data: ProtocolData, fitted: dict[str, Detector]) -> Result:
    """In-process scoring rows/s of the default detector vs IsolationForest on the test rows."""
    if data.name not in fitted:
        print(f"scoring, {data.name}: fitting the default detector once", flush=True)
        fitted[data.name] = default_detector(cfg).fit(data.train)
    detector = fitted[data.name]
    forest = isolation_forest(cfg).fit(data.train)
    n = len(data.test)

    def score_default() -> float:  # an array in: the detector builds its frame per call
        return rows_per_second(lambda: detector.decision_function(data.test),
                               n, cfg.min_scoring_seconds)

    def score_forest() -> float:
        return rows_per_second(lambda: forest.score_samples(data.test), n,
                               cfg.min_scoring_seconds)

    print(f"scoring, {data.name} ({n} test rows): default / IsolationForest rows/s", flush=True)
    a, b = interleave(score_default, score_forest, cfg.rounds)
    return Result("scoring", f"scoring rows/s, default / IsolationForest(100), {data.name}",
                  Target(">= 1.0x", 1.0, at_least=True), "rows/s", "default", a,
                  "IsolationForest", b)


# ----------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_env(**extra: str) -> dict[str, str]:
    """The environment both servers get: this one (one OpenMP thread) plus ``extra``."""
    env = {**os.environ, **extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets its own
    return env


@contextmanager
def session(command: list[str], cwd: Path, env: dict[str, str],
            log: Path) -> Iterator[subprocess.Popen]:
    """``command`` in a new session (``setsid``: its own process group and CPU share); the
    group gets SIGTERM on exit, SIGKILL if it is not gone in 30 s."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(base: str, process: subprocess.Popen, timeout: float, log: Path) -> float:
    """Polls ``GET /readyz`` until it answers 200; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before it was ready; "
                               f"log: {log}\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout:.0f} s; log: {log}")


def bentoml_serve(port: int) -> list[str]:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    return [bentoml, "serve", ".", "--host", "127.0.0.1", "--port", str(port)]


# ----------------------------------------------------------------------------- http row
def train_example_model(cfg: Config) -> tuple[str, pd.DataFrame]:
    """The default detector trained as ``scripts/demo.sh`` trains it (labelled frauds left
    out, id and label excluded, target FPR 0.01), saved and promoted. Returns the model name
    to serve and the feature columns of every example record."""
    frame = read_table(EXAMPLE_DATA)
    normal = frame[parse_labels(frame, EXAMPLE_LABEL) == 0]
    start = time.perf_counter()
    detector = Detector(target_fpr=0.01, exclude=[EXAMPLE_ID, EXAMPLE_LABEL],
                        random_state=cfg.seed, **cfg.options).fit(normal)
    tag = save_detector(detector, MODEL_NAME)
    promote(tag, reason="fast_default benchmark")
    print(f"trained and promoted {tag} in {time.perf_counter() - start:.0f} s", flush=True)
    return MODEL_NAME, frame.drop(columns=[EXAMPLE_ID, EXAMPLE_LABEL])


def single_record_bodies(records: pd.DataFrame, cfg: Config) -> list[bytes]:
    """``{"records": [one record]}`` bodies, records drawn at random from the example data."""
    picked = records.sample(cfg.http_bodies, random_state=cfg.seed)
    return [b'{"records":' + picked.iloc[[i]].to_json(orient="records").encode() + b"}"
            for i in range(len(picked))]


def block_p50_ms(client: httpx.Client, url: str, bodies: list[bytes], n: int) -> float:
    """p50 latency (ms) of ``n`` requests sent one after another, cycling through ``bodies``;
    every answer must be a 200 with one verdict."""
    latencies = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        response = client.post(url, content=bodies[i % len(bodies)], headers=JSON_HEADERS)
        latencies[i] = time.perf_counter() - start
        response.raise_for_status()
        if len(response.json()["results"]) != 1:
            raise RuntimeError(f"{url}: expected one verdict, got {response.text[:200]}")
    return float(np.median(latencies)) * 1000


def http_row(cfg: Config) -> Result:
    """Single-record ``/score`` p50: flowad's service / the trivial BentoML service."""
    model, records = train_example_model(cfg)
    bodies = single_record_bodies(records, cfg)
    flowad_port, trivial_port = free_port(), free_port()
    flowad_env = server_env(FLOWAD_MODEL=model, FLOWAD_SCORING="local", FLOWAD_WORKERS="1",
                            PYTHONPATH=str(REPO))
    trivial_env = server_env(PYTHONPATH=str(TRIVIAL_SERVICE))
    logs = WORK / "flowad-serve.log", WORK / "trivial-serve.log"
    with (session(bentoml_serve(flowad_port), REPO, flowad_env, logs[0]) as flowad,
          session(bentoml_serve(trivial_port), TRIVIAL_SERVICE, trivial_env, logs[1]) as trivial,
          httpx.Client(timeout=120) as client):
        urls = []
        for port, process, log in ((flowad_port, flowad, logs[0]),
                                   (trivial_port, trivial, logs[1])):
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, process, cfg.ready_timeout, log)
            urls.append(f"{base}/score")
            block_p50_ms(client, urls[-1], bodies, cfg.http_warmup)
        print(f"http: single-record POST /score p50 ms, flowad / trivial, blocks of "
              f"{cfg.http_requests}", flush=True)
        a, b = interleave(lambda: block_p50_ms(client, urls[0], bodies, cfg.http_requests),
                          lambda: block_p50_ms(client, urls[1], bodies, cfg.http_requests),
                          cfg.rounds)
    return Result("http", "single-record POST /score p50, flowad / trivial BentoML service",
                  Target("<= 1.5x", 1.5, at_least=False), "ms", "flowad", a, "trivial", b)


# ----------------------------------------------------------------------------- demo row
def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def venv_stamp(checkout: Path) -> str:
    """The stamp ``scripts/setup-venv.sh`` writes once ``.venv`` is installed for
    ``checkout``'s ``pyproject.toml`` (when it matches, the script installs nothing)."""
    script = (checkout / "scripts/setup-venv.sh").read_text()
    torch_version = re.search(r"^TORCH_VERSION=(\S+)", script, re.MULTILINE)
    if torch_version is None:
        raise RuntimeError("no TORCH_VERSION in scripts/setup-venv.sh")
    digest = sha256((checkout / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} torch=={torch_version[1]}"


def link_venv(clone: Path) -> str:
    """Gives ``clone`` this checkout's ``.venv``: a folder of links to its entries plus a stamp
    of its own, so ``setup-venv.sh`` can never install into the shared environment (it would
    re-point the editable install at the clone). Returns a warning when the real stamp is stale."""
    real = (REPO / ".venv").resolve()
    venv = clone / ".venv"
    venv.mkdir()
    for entry in real.iterdir():
        if entry.name != ".flowad-installed":
            (venv / entry.name).symlink_to(entry)
    want = venv_stamp(clone)
    (venv / ".flowad-installed").write_text(want + "\n")
    stamp = real / ".flowad-installed"
    have = stamp.read_text().strip() if stamp.exists() else ""
    return "" if have == want else f"{stamp} is stale: the clone's .venv got a matching stamp"


def demo_once(cfg: Config, commit: str, index: int) -> tuple[float, str]:
    """Seconds from ``bash scripts/demo.sh`` in a fresh clone to ``/readyz`` 200."""
    root = WORK / f"demo-{index}"
    clone = root / "flowad"
    root.mkdir()
    git("clone", "--quiet", "--no-checkout", str(REPO), str(clone))
    git("checkout", "--quiet", "--detach", commit, cwd=clone)
    note = link_venv(clone)
    if "PORT=" not in (clone / "scripts/demo.sh").read_text():
        port = 3000  # an older demo.sh: its fixed port
        if not port_free(port):
            raise RuntimeError("port 3000 is busy and this demo.sh has no PORT override")
    else:
        port = free_port()
    env = server_env(BENTOML_HOME=str(root / "bentoml"), PORT=str(port), PYTHONPATH=str(clone))
    log = root / "demo.log"
    start = time.perf_counter()
    with session(["bash", "scripts/demo.sh"], clone, env, log) as demo:
        wait_ready(f"http://127.0.0.1:{port}", demo, cfg.demo_timeout, log)
        took = time.perf_counter() - start
    print(f"  demo {index + 1}/{cfg.rounds}: {took:.1f} s to /readyz 200", flush=True)
    return took, note


def demo_row(cfg: Config) -> Result:
    """``bash scripts/demo.sh`` from a fresh clone (with ``.venv``) until it serves."""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    print(f"demo: fresh clones of {commit[:10]}" + (" (uncommitted changes are not in it)"
                                                    if dirty else ""), flush=True)
    runs = [demo_once(cfg, commit, i) for i in range(cfg.rounds)]
    notes = sorted({note for _, note in runs if note})
    return Result("demo", "bash scripts/demo.sh, fresh clone with .venv, to /readyz 200",
                  Target("<= 60 s (quiet machine)", 60.0, at_least=False), "s", "demo.sh",
                  [took for took, _ in runs], note="; ".join(notes))


# ----------------------------------------------------------------------------- Pareto plot
@dataclass(frozen=True)
class Point:
    label: str
    kind: str  # "candidate" or "baseline"
    mean_roc_auc: float
    median_rows_per_s: float
    total_fit_s: float


def point(label: str, kind: str, rows: pd.DataFrame) -> Point:
    """Mean ROC-AUC over datasets (each a mean over seeds), median rows/s over the runs, fit
    seconds summed over datasets (each a mean over seeds), as ``protocol.summarize`` counts.
    A dataset with a failed run (NaN) is left out of the mean, and the label says so."""
    per_dataset = rows.groupby("dataset")[["roc_auc", "fit_s"]].mean()
    auc = per_dataset["roc_auc"].dropna()
    if len(auc) < len(per_dataset):
        label += f" ({len(auc)}/{len(per_dataset)} datasets)"
    return Point(label, kind, float(auc.mean()), float(rows["rows_per_s"].median()),
                 float(per_dataset["fit_s"].sum(skipna=False)))


def candidate_files(cfg: Config) -> list[Path]:
    files = sorted(RESULTS.glob("flowad-*.csv")) + sorted((RESULTS / "levers").glob("*.csv"))
    if cfg.candidates is not None:
        files += sorted(cfg.candidates.glob("*.csv"))
    return files


def pareto_points(cfg: Config) -> tuple[list[Point], list[str]]:
    """Complete candidates (every dataset of the baselines x every protocol seed, finite
    ROC-AUC) and the ten baselines; plus a line per skipped incomplete candidate."""
    baselines = pd.DataFrame(protocol.load_bundled_baselines())
    baselines = baselines[baselines["detector"].isin(protocol.BASELINE_DETECTORS)]
    required = pd.MultiIndex.from_product(
        [sorted(baselines["dataset"].unique()), protocol.SEEDS], names=["dataset", "seed"])
    points, skipped = [], []
    for path in candidate_files(cfg):
        frame = pd.DataFrame(protocol.read_rows(path))
        for detector, rows in frame.groupby("detector", sort=False):
            label = path.stem if frame["detector"].nunique() == 1 else f"{path.stem}/{detector}"
            ok = rows[np.isfinite(rows["roc_auc"].to_numpy(float))]
            have = pd.MultiIndex.from_frame(ok[["dataset", "seed"]])
            if not required.isin(have).all():
                skipped.append(f"{label}: {int(required.isin(have).sum())} of {len(required)} "
                               "dataset x seed runs")
                continue
            ok = ok[have.isin(required)].drop_duplicates(["dataset", "seed"], keep="last")
            points.append(point(label, "candidate", ok))
    points += [point(name, "baseline", rows) for name, rows in baselines.groupby("detector")]
    return points, skipped


def pareto_front(x: np.ndarray, y: np.ndarray, x_higher_better: bool) -> np.ndarray:
    """Indices of the points no other point beats on both x and y (y: higher is better),
    ordered along x."""
    sign = 1 if x_higher_better else -1
    front = [i for i in range(len(x)) if not any(
        sign * x[j] >= sign * x[i] and y[j] >= y[i] and (x[j], y[j]) != (x[i], y[i])
        for j in range(len(x)))]
    return np.array(sorted(front, key=lambda i: x[i]), dtype=int)


def plot_pareto(points: list[Point], skipped: list[str], path: Path) -> None:
    """Two panels (ROC-AUC vs rows/s, vs fit seconds) with the Pareto front of each. Baselines
    are labelled by name; candidates, which crowd together, by number (the legend names them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = [p for p in points if p.kind == "candidate"]
    number = {p.label: i + 1 for i, p in enumerate(candidates)}
    fig, axes = plt.subplots(1, 2, figsize=(16, 6.5), sharey=True)
    panels = (("median_rows_per_s", "median test-scoring rows/s (log)", True),
              ("total_fit_s", "fit seconds summed over the 14 datasets, mean of 3 seeds (log)",
               False))
    for ax, (attr, xlabel, higher_better) in zip(axes, panels, strict=True):
        shown = [p for p in points if np.isfinite(getattr(p, attr))]
        x = np.array([getattr(p, attr) for p in shown])
        y = np.array([p.mean_roc_auc for p in shown])
        front = pareto_front(x, y, higher_better)
        ax.step(x[front], y[front], where="pre" if higher_better else "post", color="tab:red",
                alpha=0.5, label="Pareto front", zorder=2)
        for p, xi, yi in zip(shown, x, y, strict=True):
            if p.kind == "baseline":
                ax.scatter(xi, yi, marker="s", color="tab:gray", zorder=3)
                ax.annotate(p.label, (xi, yi), textcoords="offset points", xytext=(4, 3),
                            fontsize=7, color="dimgray")
            else:
                ax.scatter(xi, yi, marker="o", color=f"C{number[p.label] - 1}", zorder=3,
                           label=f"{number[p.label]}: {p.label}")
                ax.annotate(str(number[p.label]), (xi, yi), textcoords="offset points",
                            xytext=(4, 3), fontsize=8, weight="bold")
        missing = sorted(p.label for p in points if not np.isfinite(getattr(p, attr)))
        if missing:
            ax.text(0.01, 0.01, "not shown (no value): " + ", ".join(missing),
                    transform=ax.transAxes, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean ROC-AUC over 14 datasets (3 seeds each)")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(),
                                                           strict=True)}
    handles = dict(sorted(handles.items(), key=lambda item: (
        int(item[0].split(":")[0]) if item[0][0].isdigit() else 0)))
    handles["baselines (bundled)"] = plt.Line2D([], [], marker="s", color="tab:gray", ls="")
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    title = "flowad candidates (complete benchmark CSVs) and the ten bundled baselines"
    if skipped:
        title += f"; {len(skipped)} incomplete candidate(s) not shown"
    title += "\n(timings as each CSV recorded them: different runs, machines and loads)"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def fmt(value: float, unit: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    text = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(results: list[Result]) -> str:
    lines = ["| row | target | measured | A: median | B: median | result |",
             "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: ROWS.index(r.row)):
        measured = fmt(r.measured, "s") if not r.b else f"{r.measured:.2f}x"
        b = f"{r.b_name} {fmt(r.b_median, r.unit)}" if r.b else ""
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.what} | {r.target.text} | {measured} | "
                     f"{r.a_name} {fmt(r.a_median, r.unit)} | {b} | "
                     f"{r.target.verdict(r.measured)}{note} |")
    return "\n".join(lines)


def points_table(points: list[Point]) -> str:
    lines = ["| point | kind | mean ROC-AUC | median rows/s | total fit s |",
             "|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: -p.mean_roc_auc):
        lines.append(f"| {p.label} | {p.kind} | {p.mean_roc_auc:.4f} | "
                     f"{fmt(p.median_rows_per_s, '')} | {p.total_fit_s:,.1f} |")
    return "\n".join(lines)


def attempt(row: str, what: str, make: Callable[..., Result], *args: Any) -> Result:
    """``make(*args)``, or a result that says why it failed (the other rows still run)."""
    try:
        return make(*args)
    except Exception as error:
        traceback.print_exc()
        print(f"{row} ({what}) failed: {type(error).__name__}: {error}", file=sys.stderr)
        return Result(row, what, Target("", None, at_least=False), "", "", [],
                      note=f"failed: {type(error).__name__}: {str(error)[:300]}")


def measure(cfg: Config) -> list[Result]:
    """Runs the chosen rows: fit before scoring, so scoring reuses the last fitted detector."""
    results: list[Result] = []
    fitted: dict[str, Detector] = {}
    wanted = list(cfg.datasets) if {"fit", "scoring"} & set(cfg.rows) else []
    data = {name: ProtocolData.load(cfg, name) for name in wanted}
    for row, make in (("fit", fit_row), ("scoring", scoring_row)):
        if row in cfg.rows:
            results += [attempt(row, f"{row}, {name}", make, cfg, data[name], fitted)
                        for name in wanted]
    for row, make in (("http", http_row), ("demo", demo_row)):
        if row in cfg.rows:
            results.append(attempt(row, row, make, cfg))
    return results


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated, of " +
                        ",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=Config.rounds)
    parser.add_argument("--datasets", default=",".join(Config.datasets),
                        help="datasets of the scoring and fit rows")
    parser.add_argument("--data-dir", type=Path, default=Config.data_dir)
    parser.add_argument("--candidates", type=Path, help="more benchmark result CSVs to plot")
    parser.add_argument("--output", type=Path, default=Config.output, help="JSON of the numbers")
    parser.add_argument("--plot", type=Path, default=Config.plot, help="the Pareto plot (PNG)")
    parser.add_argument("--plot-only", action="store_true", help="no measurements")
    parser.add_argument("--options", type=json.loads, default={},
                        help="JSON Detector options of a candidate, measured in place of the "
                        "default in the scoring, fit and http rows (the demo runs the default)")
    args = parser.parse_args()
    rows = tuple(r for r in args.rows.split(",") if r)
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    return Config(rows=rows, rounds=args.rounds, datasets=tuple(args.datasets.split(",")),
                  data_dir=args.data_dir, options=args.options, candidates=args.candidates,
                  output=args.output,
                  plot=args.plot, plot_only=args.plot_only)


def main() -> None:
    cfg = parse_args()
    torch.set_num_threads(1)
    failed = True
    try:
        results = [] if cfg.plot_only else measure(cfg)
        points, skipped = pareto_points(cfg)
        plot_pareto(points, skipped, cfg.plot)
        failed = any(r.note.startswith("failed") for r in results)
    finally:
        if failed:
            print(f"logs and model store left in {WORK}", file=sys.stderr)
        else:
            shutil.rmtree(WORK, ignore_errors=True)
    print("\n## Pareto points\n\n" + points_table(points))
    if skipped:
        print("\nIncomplete candidates, not plotted:\n" + "\n".join(f"- {s}" for s in skipped))
    print(f"\nPareto plot: {cfg.plot}")
    if results:
        cfg.output.parent.mkdir(parents=True, exist_ok=True)
        cfg.output.write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD"), "config": {k: str(v) for k, v in
                                                           asdict(cfg).items()},
            "torch_threads": torch.get_num_threads(),
            "results": [r.to_json() for r in results],
            "pareto_points": [asdict(p) for p in points], "incomplete_candidates": skipped,
        }, indent=2) + "\n")
        print(f"numbers: {cfg.output}\n\n## Is the default fast? (medians of {cfg.rounds} "
              f"interleaved rounds)\n\n" + table(results))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
