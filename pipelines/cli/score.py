"""``flowad score``: a table scored here chunk by chunk (:mod:`pipelines.batch.local`) or on
Spark (:mod:`pipelines.batch.spark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import shown_warnings
from pipelines.cli.options import DATA_HELP, Engine


def score(
    tag: Annotated[str, typer.Argument(help="Model tag (name or name:version).")],
    data: Annotated[str, typer.Argument(help=f"Records to score: {DATA_HELP}.")],
    output: Annotated[Path, typer.Option(help="Output .csv or .parquet.")],
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk.", min=1)] = 50_000,
    fdr: Annotated[float | None, typer.Option(
        help="Flag by Benjamini-Hochberg at this false-discovery rate over the whole file "
        "instead of the per-record threshold: is_anomaly is then 'rejected by BH at level FDR' "
        "and a q_value column (the BH-adjusted p-value) is added. Reads and scores the file "
        "twice (every row's p-value is needed before the first verdict; 16 bytes per row are "
        "kept).", show_default=False)] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a "
        "terminal].", show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        help="Add each row's largest column contributions to its score (nats, measured from a "
        "typical record): top1_column, top1_contribution, top2_column, ...; ~1-3 ms a row."
        )] = False,
    explain_top: Annotated[int, typer.Option(
        help="Contributions per row with --explain.", min=1, max=20)] = 3,
    engine: Annotated[Engine, typer.Option(
        help="local: this process, chunk by chunk; spark: a Spark job on --master, OUTPUT a "
        "directory of part files (needs pyspark: the 'spark' extra).")] = Engine.local,
    master: Annotated[str, typer.Option(help="Spark master URL, with --engine spark.")]
    = "local[*]",
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse columns the model neither reads nor excludes, instead of "
        "carrying them to the output unchanged.")] = False,
    escape: Annotated[bool, typer.Option(
        "--escape-formulas/--no-escape-formulas", help="In CSV output, prefix text cells that "
        "begin with = + - @ tab or CR (and are not plain numbers) with ', so that a "
        "spreadsheet shows them instead of running them as formulas.")] = True,
) -> None:
    """Score DATA in chunks; writes the input columns plus score, log_likelihood, p_value,
    is_anomaly (and contributions with --explain). Columns the model does not read (ids,
    labels, partition keys) are carried through as read, unless --strict. OUTPUT appears only
    once every row is scored (a failed or interrupted run leaves it as it was)."""
    if fdr is not None and not 0 < fdr < 1:
        raise typer.BadParameter(f"{fdr} is not in (0, 1)", param_hint="'--fdr'")
    top = explain_top if explain else 0
    if engine is Engine.spark:
        if fdr is not None:
            raise typer.BadParameter("--fdr needs every row's p-value in one place: use the "
                                     "local engine", param_hint="'--fdr'")
        from pipelines.batch.spark import score_table

        ran_on = score_table(tag, data, str(output), master, explain_top=top, strict=strict,
                             escape_formulas=escape)
        typer.echo(f"scored {data} on Spark ({ran_on}) -> {output}")
        return
    from pipelines.batch.local import check_output_names, output_columns, score_file
    from pipelines.io.writer import TableWriter
    from pipelines.registry.store import load_detector

    with shown_warnings():
        added = output_columns(fdr, top)
        detector = load_detector(tag)
        with TableWriter(output, escape_formulas=escape) as writer:
            check_output_names(data, added)
            n_rows, n_anomalies = score_file(detector, data, writer, chunk_rows=chunk_rows,
                                             fdr=fdr, explain=top, strict=strict,
                                             progress=progress)
    rule = "" if fdr is None else f" by Benjamini-Hochberg at FDR {fdr:g}"
    typer.echo(f"scored {n_rows} rows, {n_anomalies} flagged{rule} -> {output}")
