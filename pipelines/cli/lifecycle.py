"""``flowad retrain``, ``flowad promote`` and ``flowad recalibrate``: a model's life in the
store after its first training."""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.errors import shown_warnings
from pipelines.cli.options import DATA_HELP, MaxRows, check_name, sampled_rows


def retrain(
    data: Annotated[str, typer.Argument(help=f"Fresh records: {DATA_HELP}.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "flowad-detector",
    baseline: Annotated[str | None, typer.Option(help="Compare with this tag instead of "
                                                     "production.")] = None,
    label: Annotated[str | None, typer.Option(
        help="Label column: 1/true/yes/anomaly or non-zero = anomaly (enables ROC-AUC).")] = None,
    window_rows: Annotated[int | None, typer.Option(help="Use only the last N rows.",
                                                    min=1)] = None,
    report: Annotated[Path, typer.Option(help="JSON decision report.")] = Path(
        "retrain-report.json"),
    nll_margin: Annotated[float, typer.Option(
        help="Refuse only a candidate shown to be worse than production by more than this many "
             "nats per record and encoded feature.")] = 0.05,
    nll_confidence: Annotated[float, typer.Option(
        help="One-sided confidence with which the NLL gap must be shown to exceed the margin.",
        min=0.5, max=0.9999)] = 0.99,
    nll_trim: Annotated[float, typer.Option(
        help="Share of paired NLL differences trimmed from each tail.", min=0.0, max=0.4)] = 0.1,
    max_production_fpr_ratio: Annotated[float, typer.Option(
        help="Refuse automatic promotion when production flags more than this x its target "
             "FPR of the new data.")] = 5.0,
    max_missing_rate_increase: Annotated[float, typer.Option(
        help="Largest allowed rise of a column's missing rate.")] = 0.2,
    auc_tolerance: Annotated[float, typer.Option(help="Allowed ROC-AUC drop.")] = 0.01,
    max_rows: MaxRows = 1_000_000,
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Train the candidate data-parallel in the processes torchrun "
        "started, as `train --distributed`; rank 0 saves, compares, promotes and writes the "
        "report.")] = False,
) -> None:
    """Train a candidate on fresh DATA with production's configuration; promote it if it passes
    the gate. Exit status: 0 promoted, 3 rejected, other = failure."""
    check_name(name)
    if report.is_dir() or (report.parent.exists() and not os.access(report.parent, os.W_OK)):
        # checked first: a report that fails after the gate promoted would exit as a failure,
        # and a scheduler would retrain and promote again
        raise typer.BadParameter(f"{report} is a directory or cannot be written",
                                 param_hint="'--report'")
    from pipelines.io.tables import rows_of
    from pipelines.model.artifact import json_safe
    from pipelines.model.distributed import process_group
    from pipelines.registry.gate import GateRules
    from pipelines.registry.retrain import retrain as run_retrain

    with shown_warnings(), (process_group() if distributed else nullcontext()) as parallel:
        frame = sampled_rows(data, max_rows, seed=0, window_rows=window_rows)
        rules = GateRules(nll_margin=nll_margin, nll_confidence=nll_confidence,
                          nll_trim=nll_trim, max_production_fpr_ratio=max_production_fpr_ratio,
                          max_missing_rate_increase=max_missing_rate_increase,
                          auc_tolerance=auc_tolerance)
        with rows_of(data, frame):
            decision = run_retrain(frame, name, baseline=baseline, label=label, rules=rules,
                                   progress=sys.stderr.isatty(), parallel=parallel)
        if decision is None:
            return  # a rank other than 0: its part was the training
    report.parent.mkdir(parents=True, exist_ok=True)
    # strict JSON: a mean NLL is +inf when a held-out row has zero density under a model
    report.write_text(json.dumps(json_safe(decision.to_dict()), indent=2, allow_nan=False))
    typer.echo(decision.summary())
    raise typer.Exit(0 if decision.promoted else 3)


def promote(tag: Annotated[str, typer.Argument(help="Model tag name:version.")]) -> None:
    """Make TAG the production model of its name (also how to roll back)."""
    from pipelines.registry.promotion import promote as promote_tag

    pointer = promote_tag(tag, reason="manual")
    previous = pointer["history"][-1]["previous"]
    typer.echo(f"production {pointer['name']}: {pointer['tag']} (was {previous})")


def recalibrate(
    tag: Annotated[str, typer.Argument(help="Model tag (name or name:version).")],
    target_fpr: Annotated[float, typer.Option(help="The new target false-positive rate.",
                                              show_default=False)],
    promote: Annotated[bool, typer.Option(
        "--promote", help="Make the new version the production model.")] = False,
) -> None:
    """Move TAG's threshold to a new target FPR, from its stored calibration scores (no
    retraining), and save the result as a new version of its name; prints the new tag. Not
    promoted unless --promote is given (or `flowad promote` later)."""
    if not 0 < target_fpr < 1:
        raise typer.BadParameter(f"{target_fpr} is not in (0, 1)", param_hint="'--target-fpr'")
    from pipelines.registry.promotion import promote as promote_tag
    from pipelines.registry.store import save_detector
    from pipelines.registry.verify import load_verified

    with shown_warnings():
        detector = load_verified(tag, device="cpu")
        source, before, fpr_before = detector.tag_, detector.threshold_, detector.target_fpr
        detector.recalibrate(target_fpr)
        new_tag = save_detector(detector, source.split(":")[0])
        if promote:
            promote_tag(new_tag, reason=f"recalibrated {source} to target FPR {target_fpr:g}")
    typer.echo(f"recalibrated {source}: threshold {before:.4f} at target FPR {fpr_before:g} "
               f"-> {detector.threshold_:.4f} at {target_fpr:g}"
               + (" (production)" if promote else ""), err=True)
    typer.echo(new_tag)
