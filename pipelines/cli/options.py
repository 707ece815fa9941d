"""What the commands share: choices, option types and the checks made before any data is read."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd


class FlowKind(StrEnum):
    realnvp = "realnvp"
    ffjord = "ffjord"


class Scaling(StrEnum):
    standard = "standard"
    robust = "robust"
    quantile = "quantile"


class Engine(StrEnum):
    local = "local"
    spark = "spark"


class TrainObjective(StrEnum):
    likelihood = "likelihood"
    flow_matching = "flow_matching"


class BenchmarkProtocol(StrEnum):
    one_class = "one-class"
    unsupervised = "unsupervised"


DATA_HELP = ("a CSV or Parquet file, or a dataset: a directory of them (Spark/Hive layout, "
             "key=value partition folders become columns) or a filesystem URI (s3://, gs://, "
             "hdfs://, ...)")
Model = Annotated[FlowKind, typer.Option("--model", help="The flow.")]
Objective = Annotated[TrainObjective, typer.Option(
    help="flow_matching: ffjord only, 10-20x faster to train, lower likelihood.")]
TrimShare = Annotated[float, typer.Option(
    help="Trimmed likelihood: leave the worst-fitting share of each batch out of the loss "
    "(ramped up from 0), for training data that holds anomalies.", min=0.0, max=0.5)]
MaxRows = Annotated[int, typer.Option(
    help="Fit on a uniform sample of at most this many rows (reservoir sampling in one "
    "streaming pass; memory is bounded by it, not by the table).", min=1)]


def check_objective(model: FlowKind, objective: TrainObjective) -> None:
    """Flow matching trains an ODE's field: refused for RealNVP before any data is read."""
    if objective is TrainObjective.flow_matching and model is not FlowKind.ffjord:
        raise typer.BadParameter("flow_matching trains ffjord only", param_hint="'--objective'")


def valid_name(name: str) -> bool:
    """Whether ``name`` is a model name BentoML stores as given (lower case letters, digits,
    ``_ - .``, starting with a letter or digit, at most 63 characters): checked before
    training, which a name refused at save time would waste."""
    # Here and in every command, pipelines' modules are imported where they are used, so that
    # `flowad --help` and argument errors answer without loading torch, pandas or BentoML.
    from pipelines.registry.names import is_model_name

    return is_model_name(name) and name == name.lower()


def check_name(name: str) -> None:
    """Refuses a ``--name`` that is not a model name (:func:`valid_name`)."""
    if not valid_name(name):
        raise typer.BadParameter(
            f"{name!r} is not a model name: lower case letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 63 characters", param_hint="'--name'")


def sampled_rows(data: str, max_rows: int, seed: int, *, label: str | None = None,
                 window_rows: int | None = None) -> pd.DataFrame:
    """:func:`~pipelines.io.sampling.training_sample` of ``data``, saying on stderr how many
    rows it kept of how many.

    Arguments:
        data: a file, directory or URI.
        max_rows: the sample size.
        seed: seeds the sample.
        label: a label column: rows it marks as anomalies are dropped before sampling.
        window_rows: sample only the last this many rows.
    """
    from pipelines.io.sampling import training_sample

    frame, seen = training_sample(data, max_rows, seed, label=label, window_rows=window_rows)
    if len(frame) < seen:
        typer.echo(f"sampled {len(frame)} of {seen} rows uniformly (--max-rows {max_rows})",
                   err=True)
    return frame
