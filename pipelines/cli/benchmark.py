"""``flowad benchmark``: the evaluation protocol on benchmark datasets
(:mod:`pipelines.evaluation.benchmark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.options import (
    BenchmarkProtocol,
    FlowKind,
    Model,
    Objective,
    TrainObjective,
    TrimShare,
    check_objective,
)


def benchmark(
    data_dir: Annotated[Path, typer.Option(help="Folder of .npz files with X and y.")],
    output: Annotated[Path, typer.Option(help="Output folder for the CSV and markdown.")],
    model: Model = FlowKind.realnvp,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    datasets: Annotated[str | None, typer.Option(help="Comma-separated dataset names.")] = None,
    objective: Objective = TrainObjective.likelihood,
    members: Annotated[int | None, typer.Option(
        help="Flows in an equal-weight mixture [default: the detector's default]; names the "
        "rows -mix{N} (-single for 1).", min=1, show_default=False)] = None,
    protocol: Annotated[BenchmarkProtocol, typer.Option(
        help="one-class: train on clean inliers; unsupervised: on a stratified 70% of all "
        "rows, anomalies unlabelled.")] = BenchmarkProtocol.one_class,
    trim_share: TrimShare = 0.0,
    baselines: Annotated[bool, typer.Option(
        "--baselines", help="Run the ten classical baselines (needs pyod) instead of flowad; "
        "writes baselines-{protocol}.csv and .md.")] = False,
) -> None:
    """Run the evaluation protocol on every dataset; CSV + markdown vs the ten baselines."""
    check_objective(model, objective)
    from pipelines.evaluation.benchmark import run_baselines, run_benchmark

    seed_list = tuple(int(s) for s in seeds.split(","))
    names = datasets.split(",") if datasets else None
    if baselines:
        csv_path, md_path = run_baselines(data_dir, output, seeds=seed_list, datasets=names,
                                          kind=protocol.value)
    else:
        csv_path, md_path = run_benchmark(
            data_dir, output, model=model.value, objective=objective.value, members=members,
            trim_share=trim_share, seeds=seed_list, datasets=names, kind=protocol.value)
    typer.echo(f"wrote {csv_path} and {md_path}")

