"""How a command's failure reaches the user: an :class:`~pipelines.errors.InputError` (bad
input) is one ``error: ...`` line on stderr and exit status 2; anything else is a bug and
exits with status 1 and its traceback. Warnings about the model being made or the data read
are one ``warning: ...`` line each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pipelines.errors import InputError


class Commands(TyperGroup):
    """The ``flowad`` command group: every command runs under :meth:`invoke`'s error mapping."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error


@contextmanager
def shown_warnings() -> Iterator[None]:
    """Warnings about the model being made (its threshold can never flag), the data read (a
    CSV's unfinished last line) or the verdicts (no row can be flagged at the FDR asked for),
    raised in the block, each as one ``warning: ...`` line on stderr, not Python's
    file-and-line format; others as Python shows them."""
    # imported here, as pipelines' modules are in every command: `flowad --help` loads none
    from pipelines.batch.fdr import UnflaggableWarning
    from pipelines.io.csvfiles import UnfinishedLineWarning
    from pipelines.model.calibration import SmallCalibrationWarning

    categories = (SmallCalibrationWarning, UnfinishedLineWarning, UnflaggableWarning)
    with warnings.catch_warnings(record=True) as caught:
        for category in categories:
            warnings.simplefilter("always", category)
        yield
    for warning in caught:
        if issubclass(warning.category, categories):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
