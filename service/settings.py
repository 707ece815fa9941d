"""Service settings, from environment variables, in two parts read at two moments.

:class:`Deployment` is what BentoML's decorators need, read when the service module is imported
(``bentoml serve`` and ``bentoml build`` read the decorators then): where records are scored,
the worker count, the OpenMP threads of each process, the GPU, the model a built Bento carries.
:class:`Settings` is everything else, read by each service instance when it starts, so that a
test can start a service with settings of its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from pipelines.io.limits import ReadLimits
from pipelines.registry.store import DEFAULT_NAME
from service.bundle import bundled_tag, model_to_bundle


def served_model() -> str:
    """``FLOWAD_MODEL``; unset in a built Bento, the model the Bento carries; else the default
    model name (:mod:`service.bundle`)."""
    return os.environ.get("FLOWAD_MODEL") or bundled_tag() or DEFAULT_NAME


def torch_threads() -> int:
    """``FLOWAD_TORCH_THREADS``: CPU threads per process, default 1 (fastest for small batches
    on few cores)."""
    return int(os.environ.get("FLOWAD_TORCH_THREADS", "1"))


@dataclass(frozen=True)
class Deployment:
    """What the services' decorators declare (environment variable in brackets):

    scoring: where records are scored [FLOWAD_SCORING]: ``scorer`` sends them to the ``Scorer``
        service (one process holding the accelerator, adaptive batching across requests), which
        the front then declares as a dependency; ``local`` scores them on the CPU, in the
        front-end worker that parsed them, saving a serialisation round trip per request, and no
        ``Scorer`` process is started; ``auto`` (default) is ``scorer`` when CUDA is available,
        else ``local``.
    workers: HTTP front-end worker processes [FLOWAD_WORKERS], default 1; the scorer is always
        one process. More workers only help when clients open many connections: BentoML 1.4
        workers share one listening socket and a client's keep-alive connections all stay with
        the worker that accepted them (bentoml/BentoML#5426).
    torch_threads: OMP_NUM_THREADS of every service process [FLOWAD_TORCH_THREADS].
    gpu: whether CUDA is available: the scorer then declares one GPU, else one CPU.
    bundled_tag: the model ``bentoml build`` puts in the Bento: the production model of
        [FLOWAD_MODEL] now, or None if there is none (:func:`service.bundle.model_to_bundle`).
    """

    scoring: str
    workers: int
    torch_threads: int
    gpu: bool
    bundled_tag: str | None

    @classmethod
    def from_env(cls) -> Deployment:
        scoring = os.environ.get("FLOWAD_SCORING", "auto")
        if scoring not in ("auto", "local", "scorer"):
            raise ValueError(f"FLOWAD_SCORING={scoring!r}: expected auto, local or scorer")
        gpu = torch.cuda.is_available()
        if scoring == "auto":
            scoring = "scorer" if gpu else "local"
        return cls(scoring=scoring, workers=int(os.environ.get("FLOWAD_WORKERS", "1")),
                   torch_threads=torch_threads(), gpu=gpu,
                   bundled_tag=model_to_bundle(served_model()))

    @property
    def remote_scoring(self) -> bool:
        """Whether records go to the ``Scorer`` service rather than being scored in place."""
        return self.scoring == "scorer"

    def thread_envs(self) -> list[dict[str, Any]]:
        """The ``envs`` of both services. torch.set_num_threads (at instance start) sets
        torch's own count, but the OpenMP runtimes loaded in a worker (scikit-learn's and
        torch's libgomp) size the pools of the thread BentoML scores in from OMP_NUM_THREADS,
        default every core: with two workers on two cores, their spinning threads cut
        small-request throughput ~20x. BentoML sets ``envs`` in the worker processes before
        they start (a value the caller sets wins)."""
        return [{"name": "OMP_NUM_THREADS", "value": str(self.torch_threads)}]

    def scorer_resources(self) -> dict[str, Any]:
        """The scorer's ``resources``: the GPU only where there is one, so that the same
        service serves on CPU-only hosts."""
        return {"gpu": 1} if self.gpu else {"cpu": "1"}


@dataclass(frozen=True)
class Settings:
    """What a service instance reads when it starts (environment variable in brackets):

    model: what to serve [FLOWAD_MODEL]: a model name (default ``flowad-detector``) follows
        that name's production model; ``name:version`` pins one version. Unset in a built
        Bento, the model the Bento carries, pinned (:mod:`service.bundle`).
    reload_interval: seconds between checks for a newly promoted model; 0 disables polling
        [FLOWAD_RELOAD_INTERVAL].
    admin_token: bearer token of ``POST /admin/reload``; unset disables it [FLOWAD_ADMIN_TOKEN]
        (checked by :func:`admin_token`).
    max_records: records per /score request, more is a 413 [FLOWAD_MAX_RECORDS].
    max_body_bytes: bytes per /score request body, more is a 413 [FLOWAD_MAX_BODY_BYTES].
    max_explain_records: records per ``/score?explain=true`` request, more is a 413
        [FLOWAD_MAX_EXPLAIN_RECORDS].
    max_explain_work: flow evaluations per ``/score?explain=true`` request, records x
        (columns + 1) x 16 samples, more is a 413 [FLOWAD_MAX_EXPLAIN_WORK]: explaining costs
        more per record the more columns a model has (:mod:`service.explaining`). The default
        lets 100 records of up to 30 columns through.
    explain_seconds: time allowed for one explained request, from its arrival; past it the
        explanation stops at the next chunk and answers 413 [FLOWAD_EXPLAIN_SECONDS]. Below the
        traffic timeout (120 s), as ``file_seconds``.
    max_file_bytes: bytes per /score_file upload [FLOWAD_MAX_FILE_BYTES].
    max_file_rows: rows per /score_file upload, more is a 413 [FLOWAD_MAX_FILE_ROWS]: the
        response holds a verdict per row, so bigger tables belong to ``flowad score``.
    file_seconds: time allowed for one /score_file request, from its first byte; past it the
        request stops at the next chunk and answers 413 [FLOWAD_FILE_SECONDS]. Below the
        traffic timeout (120 s), so that the client hears why instead of a bare 504.
    file_chunk_rows: rows read, validated and scored at a time from an upload
        [FLOWAD_FILE_CHUNK_ROWS].
    body_timeout: seconds allowed to receive a /score body, and the longest pause between two
        pieces of a /score_file upload; past it the request is answered 408
        [FLOWAD_BODY_TIMEOUT_S]. A client that stops sending would otherwise hold its
        connection until the traffic timeout (120 s) and get a 504, counted as a server error.
    torch_threads: CPU threads per process [FLOWAD_TORCH_THREADS] (:func:`torch_threads`).
    drift_window: recent scores the drift statistics are computed over [FLOWAD_DRIFT_WINDOW].
    read_limits: what an uploaded table may hold (:class:`~pipelines.io.limits.ReadLimits`:
        FLOWAD_MAX_COLUMNS, FLOWAD_MAX_HEADER_BYTES, FLOWAD_MAX_CELL_CHARS,
        FLOWAD_MAX_CHUNK_BYTES, FLOWAD_MAX_CHUNK_CELLS), a Parquet upload decoding to at most
        ``max_file_bytes``.
    """

    model: str
    reload_interval: float
    admin_token: str | None
    max_records: int
    max_body_bytes: int
    max_explain_records: int
    max_explain_work: int
    explain_seconds: float
    max_file_bytes: int
    max_file_rows: int
    file_seconds: float
    file_chunk_rows: int
    body_timeout: float
    torch_threads: int
    drift_window: int
    read_limits: ReadLimits

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        max_file_bytes = int(env("FLOWAD_MAX_FILE_BYTES", str(512 * 2**20)))
        return cls(
            model=served_model(),
            reload_interval=float(env("FLOWAD_RELOAD_INTERVAL", "30")),
            admin_token=admin_token(env("FLOWAD_ADMIN_TOKEN")),
            max_records=int(env("FLOWAD_MAX_RECORDS", "10000")),
            max_body_bytes=int(env("FLOWAD_MAX_BODY_BYTES", str(16 * 2**20))),
            max_explain_records=int(env("FLOWAD_MAX_EXPLAIN_RECORDS", "100")),
            max_explain_work=int(env("FLOWAD_MAX_EXPLAIN_WORK", "50000")),
            explain_seconds=float(env("FLOWAD_EXPLAIN_SECONDS", "100")),
            max_file_bytes=max_file_bytes,
            max_file_rows=int(env("FLOWAD_MAX_FILE_ROWS", "1000000")),
            file_seconds=float(env("FLOWAD_FILE_SECONDS", "100")),
            file_chunk_rows=int(env("FLOWAD_FILE_CHUNK_ROWS", "50000")),
            body_timeout=float(env("FLOWAD_BODY_TIMEOUT_S", "30")),
            torch_threads=torch_threads(),
            drift_window=int(env("FLOWAD_DRIFT_WINDOW", "2000")),
            read_limits=replace(ReadLimits.from_env(), max_total_bytes=max_file_bytes),
        )


def admin_token(value: str | None) -> str | None:
    """``FLOWAD_ADMIN_TOKEN`` as the service compares it: whitespace around it (the newline that
    ends a secret file) stripped, with a warning; None when unset or empty.

    Arguments:
        value: the variable's value.

    Raises:
        ValueError: a token no client could send: one with a character outside printable
            ASCII (a header carries bytes, and a client encodes "é" as UTF-8 or Latin-1 as it
            likes) or a control character inside it.
    """
    if value is None:
        return None
    token = value.strip()
    if token != value:
        logging.getLogger("flowad.service").warning(
            "FLOWAD_ADMIN_TOKEN: whitespace around the token (e.g. a secret file's final "
            "newline) was removed; clients send the token without it")
    bad = [c for c in token if not " " <= c <= "~"]
    if bad:
        raise ValueError(f"FLOWAD_ADMIN_TOKEN holds {bad[0]!r}: only printable ASCII characters "
                         "can be sent in an Authorization header, so no request could match "
                         "this token; choose one of ASCII letters, digits and punctuation")
    return token or None
