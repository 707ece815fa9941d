"""How a command's failure reaches the user: an :class:`~pipelines.errors.InputError` (bad
input) is one ``error: ...`` line on stderr and exit status 2; anything else is a bug and
exits with status 1 and its traceback. Warnings about the model being made or the data read
are one ``warning: ...`` line each.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import typer

from pipelines.errors import InputError

P = ParamSpec("P")
R = TypeVar("R")


def handled(command: Callable[P, R]) -> Callable[P, R]:
    """``command`` with the error mapping of the module's docstring (typer reads the wrapped
    function's parameters).

    Arguments:
        command: a command function.
    """
    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except InputError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error

    return run


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
