"""``flowad models``."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Annotated

import typer

from pipelines.cli.options import valid_name


def models(
    name: Annotated[str | None, typer.Argument(help="Only this model name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list instead of a table.")]
    = False,
) -> None:
    """List saved models: tag, production, created, kind, threshold, key metrics. Broken store
    entries (e.g. left by a killed save) are skipped with a warning naming their path, and a
    model that can never flag a record (threshold inf) gets a warning saying why."""
    from pipelines.registry.store import BrokenEntryWarning, list_detectors, mark_production

    if name is not None and not valid_name(name):
        raise typer.BadParameter(f"{name!r} is not a model name", param_hint="'NAME'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BrokenEntryWarning)
        rows = list_detectors(name)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    for problem in mark_production(rows):
        typer.echo(f"warning: {problem}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_models(rows)
        for row in rows:
            if "warning" in row:
                typer.echo(f"warning: {row['tag']}: {row['warning']}", err=True)


def print_models(rows: list[dict[str, object]]) -> None:
    """The ``flowad models`` table: on a terminal a table whose cells wrap rather than being
    cut; elsewhere (a file, a pipe, a cron job's log, where rich would cut the table to 80
    columns) tab-separated lines with a header, every value whole.

    Arguments:
        rows: the listed models, with ``production`` set.
    """
    from rich.console import Console
    from rich.table import Table

    header = ("tag", "production", "created", "kind", "target FPR", "threshold", "val NLL",
              "train rows")
    lines = [[str(row["tag"]), "yes" if row["production"] else "", *(
        f"{c:.4f}" if isinstance(c, float) else str(c) for c in (row[k] for k in (
            "created", "model_kind", "target_fpr", "threshold", "val_nll", "n_train")))]
        for row in rows]
    if not sys.stdout.isatty():
        for line in (header, *lines):
            typer.echo("\t".join(line))
        return
    table = Table(*header)
    for column in table.columns:
        column.overflow = "fold"  # a tag must stay whole to be copied
    for line in lines:
        table.add_row(*line)
    Console().print(table)
