"""Soak test of the real service: steady mixed load, a model swap and a killed worker.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/soak.py [--minutes 10] [--quick]``.

Trains two versions of a detector on the bundled example data into a temporary model store,
promotes the first and starts ``bentoml serve .`` under ``setsid`` (its own CPU share, see
``docs/design.md``) with ``FLOWAD_WORKERS=2``, ``FLOWAD_RELOAD_INTERVAL=2`` and local
scoring. Then ``--clients`` threads, each with its own connection (a new one every 50
requests, so traffic reaches the replacement worker too), send ``/score`` requests of 1, 100 or
1000 records in a loop for ``--minutes``. At 40% of the run the second version is promoted; at
50% one front-end worker gets ``kill -9``. RSS and CPU time of every server process are sampled
every few seconds. Prints, and writes as JSON to ``--output``: requests per status; every failure,
and whether each was in flight at the kill (or sent within 2 s of it) on a connection the killed
worker held; when the new model first answered and whether the old one answered after every
worker had had time to switch; p50/p99 latency per request size; per process the RSS growth
over the last 5 minutes (the second half of a shorter run), the replacement worker's from when
it is warm. Exits 1 when a requirement fails: any other failure, no replacement worker, the old
model answering late, a worker that ran through the window growing 2% or more, or the
replacement worker ending more than 2% above the survivors (it starts cold: in a 10-minute run
a worker warmed from 548 to 903 MiB over its first 160 s of load, then stayed flat). The
temporary model store, with the server's log, is left in place (its path is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="flowad-soak-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

from pipelines import Detector  # noqa: E402 - BENTOML_HOME must be set first
from pipelines.io.tables import read_table  # noqa: E402
from pipelines.registry.promotion import promote  # noqa: E402
from pipelines.registry.store import save_detector  # noqa: E402

DATA = REPO / "examples/data/transactions.csv"
EXCLUDE = ["transaction_id", "is_fraud"]  # as scripts/demo.sh: an id and the label
MODEL_NAME = "flowad-soak"
SIZES = (1, 100, 1000)
WORKER_MODULE = "_bentoml_impl.worker.service"
FRONT_SERVICE = "FlowadService"
MIB = 2**20
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Config:
    minutes: float = 10.0
    clients: int = 8
    workers: int = 2
    output: Path = REPO / "benchmarks/results/soak.json"
    quick: bool = False
    reload_interval: float = 2.0  # FLOWAD_RELOAD_INTERVAL
    swap_at: float = 0.4  # fractions of the run
    kill_at: float = 0.5
    kill_grace: float = 2.0  # s: requests sent this soon after the kill may still hit its socket
    swap_margin: float = 5.0  # s beyond one reload interval for every worker to switch
    warm_after: float = 20.0  # s: a replacement worker counts as warm this long after it appears
    reconnect_every: int = 50  # requests per connection (keep-alive pins a client to a worker)
    rss_limit_pct: float = 2.0
    bodies_per_size: int = 16
    timeout: float = 120.0

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @staticmethod
    def growth_from(duration: float) -> float:
        """Start of the RSS growth window: 5 minutes before the end, or half-way if shorter."""
        return duration - min(300.0, duration / 2)

    @property
    def rss_every(self) -> float:
        """Seconds between RSS samples: 5, or less so a short run still gets 40 samples."""
        return min(5.0, self.seconds / 40)


@dataclass
class Outcome:
    """One request; times in seconds since the load started."""

    client: int
    size: int
    sent: float
    done: float
    status: int  # 0: no HTTP response (connection error, timeout)
    model: str | None = None
    error: str | None = None
    port: int | None = None  # the client's local port, when its connection was known


@dataclass
class Events:
    promoted_at: float | None = None
    killed_at: float | None = None
    killed_pid: int | None = None
    killed_worker_id: str | None = None
    killed_worker_ports: list[int] = field(default_factory=list)  # its clients' local ports
    initial_workers: dict[int, str] = field(default_factory=dict)  # pid -> worker id


@dataclass
class ProcessSample:
    t: float
    pid: int
    role: str
    rss_mib: float
    cpu_s: float  # user + system CPU time so far


# ----------------------------------------------------------------------------- setup
def train_versions(cfg: Config) -> tuple[str, str, pd.DataFrame]:
    """Trains and saves two versions of ``MODEL_NAME``, promotes the first.
    Returns (first tag, second tag, the feature columns of every example record)."""
    frame = read_table(DATA)
    normal = frame[frame.is_fraud == 0]
    train_options = {"max_epochs": 3 if cfg.quick else 30}
    flow_options = {"members": 1} if cfg.quick else None
    tags = []
    for seed in (0, 1):
        start = time.perf_counter()
        detector = Detector(exclude=EXCLUDE, target_fpr=0.01, random_state=seed,
                            train_options=train_options, flow_options=flow_options).fit(normal)
        tags.append(save_detector(detector, MODEL_NAME))
        print(f"trained {tags[-1]} in {time.perf_counter() - start:.0f} s")
    promote(tags[0], reason="soak: initial")
    return tags[0], tags[1], frame.drop(columns=EXCLUDE)


def request_bodies(records: pd.DataFrame, cfg: Config) -> dict[int, list[bytes]]:
    """Pre-encoded JSON bodies per request size, records drawn at random from the data."""
    rng = np.random.default_rng(0)
    return {size: [records.sample(size, random_state=rng).to_json(orient="records").encode()
                   for _ in range(cfg.bodies_per_size)]
            for size in SIZES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(cfg: Config, port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """``bentoml serve .`` in a new session; its process group is stopped on exit."""
    env = {**os.environ, "FLOWAD_MODEL": MODEL_NAME, "FLOWAD_WORKERS": str(cfg.workers),
           "FLOWAD_RELOAD_INTERVAL": str(cfg.reload_interval), "FLOWAD_SCORING": "local"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets its own
    env.pop("OMP_NUM_THREADS", None)  # the service sets it
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [bentoml, "serve", ".", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield server
        finally:
            stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is not gone in 30 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the service did not become ready")


# ----------------------------------------------------------------------------- processes
def worker_id(cmdline: list[str]) -> str | None:
    """The worker id of a front-end worker's command line, None for any other process."""
    if WORKER_MODULE not in cmdline or "--worker-id" not in cmdline:
        return None
    service = cmdline[cmdline.index("--service-name") + 1] if "--service-name" in cmdline else ""
    return cmdline[cmdline.index("--worker-id") + 1] if service == FRONT_SERVICE else None


def server_processes(server_pid: int) -> list[tuple[psutil.Process, str]]:
    """Every process of the server's tree with its role: arbiter, worker N or its program."""
    root = psutil.Process(server_pid)
    found = [(root, "arbiter")]
    for child in root.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        wid = worker_id(cmdline)
        found.append((child, f"worker {wid}" if wid else Path(cmdline[0]).name if cmdline
                      else child.name()))
    return found


def front_workers(server_pid: int) -> dict[int, str]:
    """pid -> worker id of the front-end workers."""
    return {p.pid: role.removeprefix("worker ") for p, role in server_processes(server_pid)
            if role.startswith("worker ")}


def sample_processes(server_pid: int, t0: float, every: float, stop: threading.Event,
                     out: list[ProcessSample]) -> None:
    """Appends RSS and CPU time of every server process to ``out`` every ``every`` seconds."""
    while not stop.is_set():
        t = time.monotonic() - t0
        try:
            processes = server_processes(server_pid)
        except psutil.Error:
            processes = []
        for process, role in processes:
            with suppress(psutil.Error):
                with process.oneshot():
                    rss, cpu = process.memory_info().rss, process.cpu_times()
                out.append(ProcessSample(t, process.pid, role, rss / MIB, cpu.user + cpu.system))
        stop.wait(every)


# ----------------------------------------------------------------------------- load
@dataclass
class LoadClient:
    """One client: random-size requests until ``stop``, on a new connection every
    ``cfg.reconnect_every`` requests. BentoML's workers share one listening socket and a
    keep-alive connection stays with the worker that accepted it (bentoml/BentoML#5426): without
    reconnecting, every client lands on the surviving worker after the kill and the replacement
    never gets any traffic."""

    index: int
    url: str
    bodies: dict[int, list[bytes]]
    cfg: Config
    t0: float
    stop: threading.Event
    out: list[Outcome]

    port: int | None = None  # local port of the current connection, once a response came

    def run(self) -> None:
        rng = np.random.default_rng(100 + self.index)
        while not self.stop.is_set():
            self.port = None
            with httpx.Client(timeout=self.cfg.timeout) as client:
                for _ in range(self.cfg.reconnect_every):
                    if self.stop.is_set():
                        break
                    size = SIZES[rng.integers(len(SIZES))]
                    body = self.bodies[size][rng.integers(len(self.bodies[size]))]
                    self.out.append(self.request(client, size, body))

    def request(self, client: httpx.Client, size: int, body: bytes) -> Outcome:
        """Sends one request; its outcome, with the model that answered a 200 and the local
        port of the connection (which worker holds it can be read off the server side)."""
        sent = time.monotonic() - self.t0
        try:
            response = client.post(self.url, content=body, headers=JSON)
        except httpx.HTTPError as error:
            port, self.port = self.port, None  # httpx opens a new connection next time
            return Outcome(self.index, size, sent, time.monotonic() - self.t0, 0,
                           error=f"{type(error).__name__}: {error}", port=port)
        done = time.monotonic() - self.t0
        with suppress(KeyError, OSError):  # OSError: the server closed the connection
            self.port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        if response.status_code != 200:
            return Outcome(self.index, size, sent, done, response.status_code,
                           error=response.text[:300], port=self.port)
        model = orjson.loads(response.content)["model"]
        return Outcome(self.index, size, sent, done, 200, model=model, port=self.port)


def kill_one_worker(server_pid: int, events: Events, t0: float) -> None:
    """``kill -9`` to the front-end worker with the lowest id; notes the client ports of the
    connections it held."""
    workers = front_workers(server_pid)
    pid = min(workers, key=lambda p: int(workers[p]))
    connections = psutil.Process(pid).net_connections(kind="tcp")
    events.killed_worker_ports = sorted(c.raddr.port for c in connections if c.raddr)
    events.killed_at = time.monotonic() - t0
    os.kill(pid, signal.SIGKILL)
    events.killed_pid, events.killed_worker_id = pid, workers[pid]
    print(f"[{events.killed_at:6.1f} s] kill -9 worker {workers[pid]} (pid {pid}, "
          f"{len(events.killed_worker_ports)} client connections); workers were {workers}")


def run_load(cfg: Config, base: str, server: subprocess.Popen, bodies: dict[int, list[bytes]],
             new_tag: str) -> tuple[list[Outcome], list[ProcessSample], Events, float]:
    """The soak: clients and RSS sampler run while this thread promotes and kills on schedule.
    Returns (outcomes, RSS samples, events, load duration in seconds)."""
    outcomes: list[Outcome] = []
    samples: list[ProcessSample] = []
    events = Events(initial_workers=front_workers(server.pid))
    print(f"front-end workers: {events.initial_workers}")
    stop = threading.Event()
    t0 = time.monotonic()
    clients = [LoadClient(i, f"{base}/score", bodies, cfg, t0, stop, outcomes)
               for i in range(cfg.clients)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    threads.append(threading.Thread(target=sample_processes, daemon=True,
                                    args=(server.pid, t0, cfg.rss_every, stop, samples)))
    for thread in threads:
        thread.start()

    def at(fraction: float) -> None:
        time.sleep(max(0.0, t0 + fraction * cfg.seconds - time.monotonic()))

    try:
        at(cfg.swap_at)
        events.promoted_at = time.monotonic() - t0
        promote(new_tag, reason="soak: mid-run swap")
        print(f"[{events.promoted_at:6.1f} s] promoted {new_tag}")
        at(cfg.kill_at)
        kill_one_worker(server.pid, events, t0)
        at(1.0)
    finally:
        stop.set()
        duration = time.monotonic() - t0
        for thread in threads:
            thread.join(timeout=cfg.timeout)
    return outcomes, samples, events, duration


# ----------------------------------------------------------------------------- analysis
def failure_summary(outcomes: list[Outcome], events: Events, cfg: Config) -> dict[str, Any]:
    """Failures: was each in flight at the kill (or sent just after it), and on a connection
    the killed worker held (None: its connection had not answered yet, so unknown)?"""
    kill, killed_ports = events.killed_at, set(events.killed_worker_ports)
    failures = sorted((o for o in outcomes if o.status != 200), key=lambda o: o.sent)
    listed = []
    for o in failures:
        in_flight = o.sent <= kill <= o.done
        just_after = kill < o.sent <= kill + cfg.kill_grace
        on_killed = None if o.port is None else o.port in killed_ports
        listed.append({**asdict(o), "in_flight_at_kill": in_flight,
                       "sent_just_after_kill": just_after, "on_killed_worker": on_killed,
                       "expected": (in_flight or just_after) and on_killed is not False})
    return {
        "count": len(failures),
        "kill_window_s": [kill, kill + cfg.kill_grace],
        "killed_worker_connections": len(killed_ports),
        "in_flight_at_kill": sum(f["in_flight_at_kill"] for f in listed),
        "on_killed_worker": sum(f["on_killed_worker"] is True for f in listed),
        "all_expected": all(f["expected"] for f in listed),
        "failures": listed,
    }


def swap_summary(outcomes: list[Outcome], old: str, new: str, events: Events,
                 cfg: Config) -> dict[str, Any]:
    """When the new model first answered; whether the old one answered a request sent after
    every worker should have switched (first new answer + reload interval + margin)."""
    ok = [o for o in outcomes if o.status == 200]
    first_new = min((o.done for o in ok if o.model == new), default=None)
    old_sent = [o.sent for o in ok if o.model == old]
    deadline = None if first_new is None else first_new + cfg.reload_interval + cfg.swap_margin
    late_old = [] if deadline is None else [t for t in old_sent if t > deadline]
    return {
        "promoted_at": events.promoted_at,
        "first_new_response_at": first_new,
        "swap_delay_s": None if first_new is None else first_new - events.promoted_at,
        "last_old_request_sent_at": max(old_sent, default=None),
        "old_model_deadline": deadline,
        "old_model_responses_after_deadline": len(late_old),
        "other_models": sorted({o.model for o in ok} - {old, new}),
        "ok": first_new is not None and not late_old,
    }


def latency_summary(outcomes: list[Outcome], duration: float) -> dict[str, Any]:
    """Per request size: count, requests/s, p50 and p99 latency (ms) of the 200s."""
    out = {}
    for size in SIZES:
        ms = np.array([o.done - o.sent for o in outcomes if o.status == 200 and o.size == size])
        ms *= 1000
        p50, p99 = np.percentile(ms, [50, 99]) if len(ms) else (float("nan"),) * 2
        out[str(size)] = {"requests": len(ms), "requests_per_s": len(ms) / duration,
                          "p50_ms": float(p50), "p99_ms": float(p99)}
    return out


def rss_summary(samples: list[ProcessSample], events: Events, cfg: Config,
                duration: float) -> dict[str, Any]:
    """Per process: RSS at the start of the growth window and at the end, growth in %, the
    fitted trend over the window, and the CPU seconds it spent in the window (did it serve?).
    Worker processes started after the kill are measured from when they are warm."""
    by_pid: dict[int, list[ProcessSample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    window_from = cfg.growth_from(duration)
    out = {}
    for pid, series in by_pid.items():
        role = series[-1].role
        t = np.array([s.t for s in series])
        rss = np.array([s.rss_mib for s in series])
        cpu = np.array([s.cpu_s for s in series])
        replacement = role.startswith("worker ") and pid not in events.initial_workers
        alive = t[-1] >= duration - 2 * cfg.rss_every
        start_at = t[0] + cfg.warm_after if replacement else window_from
        window = t >= start_at
        entry: dict[str, Any] = {"role": role, "replacement": replacement, "alive_at_end": alive,
                                 "first_seen_s": float(t[0]), "last_seen_s": float(t[-1]),
                                 "rss_peak_mib": float(rss.max())}
        if window.sum() >= 2 and alive:
            tw, rw, cw = t[window], rss[window], cpu[window]
            slope = np.polyfit(tw, rw, 1)[0]
            entry.update({
                "window_s": [float(tw[0]), float(tw[-1])],
                "rss_start_mib": float(rw[0]), "rss_end_mib": float(rw[-1]),
                "growth_pct": float(100 * (rw[-1] / rw[0] - 1)),
                "trend_pct": float(100 * slope * (tw[-1] - tw[0]) / rw[0]),
                "cpu_s": float(cw[-1] - cw[0]),
            })
        out[str(pid)] = entry
    return out


def requirements(failures: dict[str, Any], swap: dict[str, Any], rss: dict[str, Any],
                 cfg: Config) -> dict[str, bool]:
    """A worker that ran through the whole window must not grow by ``rss_limit_pct``. A
    replacement starts cold and warms up (allocator arenas, caches) for minutes, so its growth
    is judged by where it ends: at most ``rss_limit_pct`` above the survivors' final RSS (a
    leak would carry it past them)."""
    workers = [r for r in rss.values() if r["role"].startswith("worker ") and r["alive_at_end"]]
    steady = [r for r in workers if not r["replacement"]]
    ceiling = max((r.get("rss_end_mib", 0.0) for r in steady), default=0.0)
    ceiling *= 1 + cfg.rss_limit_pct / 100
    return {
        "failures only in flight on the killed worker": failures["all_expected"],
        "a replacement worker started": any(r["replacement"] for r in workers),
        "new model served, old one not after the deadline": swap["ok"],
        f"worker RSS growth < {cfg.rss_limit_pct}% over the window": bool(steady) and all(
            "growth_pct" in r and r["growth_pct"] < cfg.rss_limit_pct for r in steady),
        f"replacement worker ends within {cfg.rss_limit_pct}% of the survivors' RSS": all(
            r.get("rss_end_mib", float("inf")) <= ceiling for r in workers if r["replacement"]),
    }


# ----------------------------------------------------------------------------- report
def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_report(report: dict[str, Any]) -> None:
    print(f"\nload: {report['duration_s']:.0f} s, {report['requests']} requests, "
          f"{report['records_per_s']:,.0f} records/s")
    print("status codes:", ", ".join(f"{k}: {v}" for k, v in report["status_codes"].items()))
    f = report["failures"]
    lo, hi = f["kill_window_s"]
    print(f"failures: {f['count']}, {f['in_flight_at_kill']} in flight at the kill, "
          f"{f['on_killed_worker']} on a connection of the killed worker (it held "
          f"{f['killed_worker_connections']}); kill window {lo:.1f}-{hi:.1f} s; all of them "
          f"in the window on the killed worker: {f['all_expected']}")
    for o in f["failures"]:
        print(f"  sent {o['sent']:7.2f} s done {o['done']:7.2f} s  size {o['size']:4}  "
              f"status {o['status']}  port {o['port']}  on killed worker: "
              f"{o['on_killed_worker']}  expected: {o['expected']}  {o['error']}")
    s = report["swap"]
    print(f"swap: promoted at {seconds(s['promoted_at'])}, first new-model response at "
          f"{seconds(s['first_new_response_at'])} (after {seconds(s['swap_delay_s'])}), "
          f"last old-model request sent at {seconds(s['last_old_request_sent_at'])}, deadline "
          f"{seconds(s['old_model_deadline'])}, old-model responses after it: "
          f"{s['old_model_responses_after_deadline']}, other models: {s['other_models']}")
    print(f"{'records/request':>16} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for size, row in report["latency"].items():
        print(f"{size:>16} {row['requests']:>9} {row['requests_per_s']:>7.1f} "
              f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}")
    print("RSS per server process; growth and CPU time over the window (the last 5 minutes, the "
          "second half of a shorter run, a replacement worker from when it is warm)")
    print(f"{'pid':>8} {'role':<12} {'seen s':>13} {'window s':>13} {'RSS MiB':>17} "
          f"{'growth':>7} {'trend':>7} {'CPU s':>6}")
    for pid, r in report["rss"].items():
        seen = f"{r['first_seen_s']:.0f}-{r['last_seen_s']:.0f}"
        role = r["role"] + (" (new)" if r["replacement"] else "")
        if "growth_pct" in r:
            w = f"{r['window_s'][0]:.0f}-{r['window_s'][1]:.0f}"
            mib = f"{r['rss_start_mib']:.1f} -> {r['rss_end_mib']:.1f}"
            print(f"{pid:>8} {role:<12} {seen:>13} {w:>13} {mib:>17} {r['growth_pct']:>6.2f}% "
                  f"{r['trend_pct']:>6.2f}% {r['cpu_s']:>6.1f}")
        else:
            peak = f"peak {r['rss_peak_mib']:.1f}"
            print(f"{pid:>8} {role:<12} {seen:>13} {'-':>13} {peak:>17}")
    print("requirements:")
    for name, ok in report["requirements"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def log_errors(log_path: Path) -> list[str]:
    """Lines of the server log that report an error or a traceback."""
    keys = ("Traceback", "ERROR", "Exception", "exited", "killed")
    return [line.rstrip() for line in log_path.read_text(errors="replace").splitlines()
            if any(k in line for k in keys)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=Config.minutes, help="load duration")
    parser.add_argument("--clients", type=int, default=Config.clients, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=Config.workers, help="FLOWAD_WORKERS")
    parser.add_argument("--output", type=Path, default=Config.output, help="JSON results")
    parser.add_argument("--quick", action="store_true",
                        help="train one flow for 3 epochs (instead of the default mixture, 30)")
    args = parser.parse_args()
    cfg = Config(minutes=args.minutes, clients=args.clients, workers=args.workers,
                 output=args.output, quick=args.quick)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks

    old_tag, new_tag, records = train_versions(cfg)
    bodies = request_bodies(records, cfg)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(os.environ["BENTOML_HOME"]) / "serve.log"
    print(f"bentoml serve on {base}, log {log_path}, BENTOML_HOME {os.environ['BENTOML_HOME']}")
    with served(cfg, port, log_path) as server:
        wait_ready(base, server)
        print(f"ready; {cfg.clients} clients for {cfg.minutes} min")
        outcomes, samples, events, duration = run_load(cfg, base, server, bodies, new_tag)

    ok = [o for o in outcomes if o.status == 200]
    report: dict[str, Any] = {
        "config": {**asdict(cfg), "output": str(cfg.output)},
        "models": {"old": old_tag, "new": new_tag},
        "events": asdict(events),
        "duration_s": duration,
        "requests": len(outcomes),
        "records_per_s": sum(o.size for o in ok) / duration,
        "status_codes": dict(sorted(Counter(str(o.status) for o in outcomes).items())),
        "failures": failure_summary(outcomes, events, cfg),
        "swap": swap_summary(outcomes, old_tag, new_tag, events, cfg),
        "latency": latency_summary(outcomes, duration),
        "rss": rss_summary(samples, events, cfg, duration),
        "server_log_errors": log_errors(log_path),
        "rss_samples": [asdict(s) for s in samples],
    }
    report["requirements"] = requirements(report["failures"], report["swap"], report["rss"], cfg)
    print_report(report)
    if report["server_log_errors"]:
        print(f"server log ({log_path}), error lines:")
        print("\n".join("  " + line for line in report["server_log_errors"][-20:]))
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {cfg.output}")
    sys.exit(0 if all(report["requirements"].values()) else 1)


if __name__ == "__main__":
    main()
