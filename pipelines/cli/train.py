"""``flowad train``."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Annotated

import typer

from pipelines.cli.errors import shown_warnings
from pipelines.cli.options import (
    DATA_HELP,
    FlowKind,
    MaxRows,
    Model,
    Objective,
    Scaling,
    TrainObjective,
    TrimShare,
    check_name,
    check_objective,
    sampled_rows,
)


def train(
    data: Annotated[str, typer.Argument(help=f"Records, (mostly) normal: {DATA_HELP}.")],
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "flowad-detector",
    model: Model = FlowKind.realnvp,
    target_fpr: Annotated[float, typer.Option(help="False-positive rate to calibrate.")] = 0.01,
    exclude: Annotated[list[str] | None, typer.Option(help="Column to ignore (repeat).")] = None,
    label: Annotated[str | None, typer.Option(
        help="Label column: rows labelled 1/true/yes/anomaly or non-zero are left out.")] = None,
    scaling: Annotated[Scaling, typer.Option(help="Scaling of continuous columns.")]
    = Scaling.standard,
    atom_share: Annotated[float, typer.Option(
        help="A continuous value held by this share of rows is dequantised as a point mass; "
        "0 turns it off.")] = 0.01,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs.", min=1)] = None,
    objective: Objective = TrainObjective.likelihood,
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture, each trained with its own seed "
        "[default: 2 for realnvp, 1 for ffjord].", min=1, show_default=False)] = None,
    trim_share: TrimShare = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_rows: MaxRows = 1_000_000,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Data-parallel training in the processes torchrun started "
        "(torchrun --nproc_per_node N -m pipelines.cli train ... --distributed): gradients "
        "averaged by DistributedDataParallel, NCCL on GPUs, gloo on CPUs; rank 0 saves.")]
    = False,
) -> None:
    """Train a detector on DATA and save it to the model store; prints the model tag."""
    check_objective(model, objective)
    check_name(name)
    from pipelines.io.tables import rows_of
    from pipelines.model.detector import Detector
    from pipelines.model.distributed import process_group
    from pipelines.registry.store import save_detector

    with shown_warnings(), (process_group() if distributed else nullcontext()) as parallel:
        frame = sampled_rows(data, max_rows, seed, label=label)
        excluded = [*(exclude or []), *([label] if label is not None else [])]
        train_options: dict[str, object] = {"objective": objective.value}
        if max_epochs is not None:
            train_options["max_epochs"] = max_epochs
        if trim_share > 0:
            train_options["trim_share"] = trim_share
        detector = Detector(
            model.value, target_fpr=target_fpr, scaling=scaling.value, exclude=excluded,
            random_state=seed, atom_share=atom_share or None, train_options=train_options,
            flow_options={"members": members} if members else None,
            progress=sys.stderr.isatty(), n_threads=None,  # --threads has set torch's count
        )
        with rows_of(data, frame):
            detector.fit(frame, parallel=parallel)
        if parallel is not None and parallel.rank > 0:
            return  # the model is rank 0's to save: one run, one version
    tag = save_detector(detector, name)
    metrics = detector.metrics_
    typer.echo(
        f"trained {model.value} ({metrics['members']} flow(s)) on {metrics['n_train']} rows: "
        f"validation NLL {metrics['val_nll']:.4f}, "
        f"threshold {detector.threshold_:.4f} at target FPR {target_fpr}",
        err=True,
    )
    grids = ", ".join(f"{c} (step {s:g})" for c, s in detector.describe()["grid_columns"].items())
    typer.echo(f"columns on a grid: {grids or 'none'}", err=True)
    typer.echo(tag)
