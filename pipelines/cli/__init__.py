"""The ``flowad`` command line: parse, call pipelines, print, exit.

One module per command group (train, score, evaluate, models, lifecycle, benchmark); the
commands import what they use when they run, so that ``flowad --help`` and argument errors
answer at once. An :class:`~pipelines.errors.InputError` exits with status 2, anything else
with status 1 (:mod:`pipelines.cli.errors`).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Annotated

import typer

from pipelines.cli.benchmark import benchmark
from pipelines.cli.errors import handled
from pipelines.cli.evaluate import evaluate
from pipelines.cli.lifecycle import promote, recalibrate, retrain
from pipelines.cli.models import models
from pipelines.cli.score import score
from pipelines.cli.train import train

# Plain help text: rich markup would swallow the "[default: ...]" of option help.
app = typer.Typer(help="Anomaly detection with exact normalizing-flow likelihoods.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
for command in (train, score, evaluate, models, retrain, promote, recalibrate, benchmark):
    app.command()(handled(command))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"flowad {version('flowad')}")
        raise typer.Exit()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's timeout, a pod's eviction, ``kill``) unwinds the command like an
    error: a half-written output or model is removed on the way out. Python's default action
    ends the process on the spot, leaving them behind."""
    typer.echo(f"error: terminated by {signal.Signals(signum).name}", err=True)
    raise SystemExit(128 + signum)


def _finished(signum: int, frame: object) -> None:
    """SIGTERM once the command is done: the process is exiting anyway, with its status."""


def _set_environment() -> None:
    """The process environment a command runs in, set before torch or BentoML is imported:
    BentoML's usage tracking off, and OpenMP's waiting threads sleeping instead of spinning
    (spinning threads on cores another process is using made a training step hundreds of times
    slower: benchmarks/README.md). A value the user set is kept."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@app.callback()
def main(
    ctx: typer.Context,
    threads: Annotated[int, typer.Option(
        help="Torch CPU threads; 0 = torch's default, one per core. The default flows are small: "
        "one thread trains them as fast as two on an idle machine, and far faster on a busy "
        "one.")] = 1,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_version, is_eager=True)]
    = False,
) -> None:
    """Anomaly detection with exact normalizing-flow likelihoods."""
    _set_environment()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # Once the command has finished (a retrain promoted, its report written), a SIGTERM
        # during the interpreter's teardown must not turn its exit status into a failure,
        # which a scheduler would retry.
        # (A handler, not SIG_IGN, which the processes it starts would inherit.)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, _finished))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
