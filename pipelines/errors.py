"""Every error flowad raises on purpose, in one hierarchy, and how a value is echoed in one.

* :class:`FlowadError`: the base.
* :class:`InputError` (also a ``ValueError``): bad input from the user, a file, a record, a
  parameter, a model name or tag. ``flowad`` prints ``error: <message>`` and exits with status
  2, the service answers 4xx. Any other exception is a bug: ``flowad`` exits with status 1 and
  its traceback.

  * :class:`SchemaError`: records that do not match what the model was fitted on. Where it is
    (column, row, index label, file, CSV line, Spark partition) is kept in fields, and one
    formatter writes the message from them, so that a caller that knows more (the file a chunk
    came from) sets a field instead of re-wording the message.
  * :class:`UnscorableRecordError`, :class:`UnreadableTableError`,
    :class:`TableTooLargeError`, :class:`ModelNameError`, :class:`ModelNotFoundError`
    (:class:`NoProductionModel`), :class:`ModelCheckError`, :class:`DamagedPointerError`.

* :class:`ProductionChanged`, :class:`TrainingError`: states and failures that are no one's
  input.

Messages echo values through :func:`shown`: clients control the values they send, and a 1 MB
string must not become a 1 MB message.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

SHOWN_CHARS = 60  # longest echo of a value in an error message
SHOWN_NAMES = 5  # most column names listed in one error message
_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel, _CONTAINER_REPR.maxother = 2, SHOWN_CHARS


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    A cut repr ends with "…" and the full length (of the string itself for ``str``, else of
    the repr).

    Arguments:
        value: the value to echo.
        limit: the most characters of the repr kept.
    """
    if isinstance(value, np.generic):  # np.True_, np.float64(1.5): show them as JSON gave them
        value = value.item()
    size: int | None
    if isinstance(value, str):
        # repr of a slice: no copy of a huge string just to cut it
        text, size = repr(value[: limit + 1]), len(value)
    elif isinstance(value, int):
        try:
            text = repr(value)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
        size = len(text)
    else:  # containers: reprlib stops at a few items and levels (JSON can nest 1000 deep)
        text = _CONTAINER_REPR.repr(value)
        size = len(text) if len(text) <= limit else None
    if len(text) <= limit:
        return text
    if size is None:
        return f"{text[:limit]}…"
    return f"{text[:limit]}… ({size} characters)"


def shown_names(names: Sequence[Any], most: int = SHOWN_NAMES) -> str:
    """Column names for a message: each cut by :func:`shown`, at most ``most`` of them.

    Arguments:
        names: the names.
        most: how many are listed before "and N more".
    """
    listed = ", ".join(shown(name) for name in names[:most])
    more = len(names) - most
    return f"{listed} and {more} more" if more > 0 else listed


class FlowadError(Exception):
    """The base of every error flowad raises on purpose."""


class InputError(FlowadError, ValueError):
    """Bad input from the user: the CLI exits with status 2, the service answers 4xx.

    Arguments:
        problem: what is wrong (the whole message, but for the file).
        file: the file (or dataset) it is about, written first.
    """

    def __init__(self, problem: str, *, file: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.file = file

    def detail(self) -> str:
        """The message without the file (subclasses write theirs from their fields)."""
        return self.problem

    def __str__(self) -> str:
        return self.detail() if self.file is None else f"{self.file}: {self.detail()}"

    def located(self, **fields: Any) -> Self:
        """A copy with these fields set (e.g. ``file=...``): the same error, located further
        by a caller that knows more than the raiser did.

        Arguments:
            fields: attribute names and their new values.
        """
        unknown = set(fields) - set(vars(self))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        return _rebuilt(type(self), self.args, {**vars(self), **fields})

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than their args: copies and pickles (a Spark
        # executor's error) are rebuilt from the fields, not by calling __init__ again.
        return _rebuilt, (type(self), self.args, dict(vars(self)))


def _rebuilt(cls: type[InputError], args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
    """An error of class ``cls`` with these ``args`` and fields, without calling its
    ``__init__``."""
    error = cls.__new__(cls)
    error.args = args
    vars(error).update(fields)
    return error


class SchemaError(InputError):
    """Records that do not match what the encoder was fitted on.

    The message is written from the fields: ``column 'age', row 3 (index label 'x'): problem``
    (with the file first, the CSV line after, a Spark partition and the file a partition's row
    was read from where they are known).

    Arguments:
        problem: what is wrong, without where (echo values through :func:`shown`).
        column: the column the problem is in (None: about a record or the frame as a whole,
            or the problem names its columns itself).
        row: the 0-based row: a position in the frame checked, or (once located) in the file
            or the Spark partition.
        label: the row's index label in the frame checked (kept by subsets of a frame, where
            positions are not); written when it is not the position itself.
        file: the file or dataset the row is in.
        line: the row's line in a CSV file.
        partition: the Spark partition the row is counted in.
        source: the file a Spark partition's row was read from.
        context: why the problem matters here, written after it.
        named: the problem names ``column`` itself (a list of missing or unexpected columns,
            the first of them ``column``): the formatter does not write it again.
    """

    def __init__(self, problem: str, *, column: str | None = None, row: int | None = None,
                 label: Any = None, file: str | None = None, line: int | None = None,
                 partition: int | None = None, source: str | None = None,
                 context: str | None = None, named: bool = False) -> None:
        super().__init__(problem, file=file)
        self.column, self.row, self.label = column, row, label
        self.line, self.partition, self.source, self.context = line, partition, source, context
        self.named = named

    @classmethod
    def of_columns(cls, problem: str, names: Sequence[Any]) -> SchemaError:
        """An error about columns as a whole, which ``problem`` lists (``column``: the first).

        Arguments:
            problem: what is wrong, naming the columns (:func:`shown_names`).
            names: the columns, first the one ``column`` holds.
        """
        return cls(problem, column=str(names[0]), named=True)

    @classmethod
    def at(cls, frame: Any, column: str, row: int, problem: str) -> SchemaError:
        """An error about one cell, e.g. "column 'age', row 3: expected a number, got 'abc'".

        Arguments:
            frame: the frame checked, or one of its columns (a pandas object: the row's index
                label is kept).
            column: the column name.
            row: the 0-based positional row.
            problem: what is wrong with the value.
        """
        return cls(problem, column=column, row=row, label=frame.index[row])

    def in_file(self, first_row: int) -> Self:
        """The same error about a chunk that starts at row ``first_row`` of a file: the row
        counted in the file (a chunk's own positions, and their labels, mean nothing to the
        user).

        Arguments:
            first_row: the chunk's first row in the file.
        """
        if self.row is None:
            return self
        return self.located(row=first_row + self.row, label=None)

    def _label_shown(self) -> bool:
        plain = isinstance(self.label, int | np.integer) and self.label == self.row
        return self.label is not None and not plain

    def detail(self) -> str:
        named = self.column is None or self.named
        where = [] if named else [f"column {shown(self.column)}"]
        if self.row is not None:
            row = f"row {self.row}"
            if self.partition is not None:
                row += f" of partition {self.partition}"
            if self._label_shown():
                row += f" (index label {shown(self.label)})"
            if self.source:
                row += f" (read from {self.source})"
            where.append(row)
        text = f"{', '.join(where)}: {self.problem}" if where else self.problem
        if self.context:
            text += f" ({self.context})"
        if self.line is not None:
            text += f" (line {self.line} of the CSV)"
        if self.partition is not None and self.row is None:
            text = f"partition {self.partition}: {text}"
        return text


class UnscorableRecordError(SchemaError):
    """The flow gave a record no log-likelihood (NaN) although it passed every input check.

    Scoring raises it instead of returning NaN. It is a :class:`SchemaError`, so a caller that
    rejects bad input rejects this record too, naming its row; but it also means the checks
    missed something or the model is broken, so callers should count or log it apart (the
    service answers 422). ``-inf`` (zero density) is a verdict, not this error.

    Arguments:
        row: the 0-based positional row.
        count: how many records of the batch the model could not score.
    """

    PROBLEM = ("the model gives this record no log-likelihood (NaN) although it passed the "
               "input checks")

    def __init__(self, row: int, count: int = 1) -> None:
        super().__init__(f"{self.PROBLEM} ({count} such record(s)); nothing was scored",
                         row=row)


class UnreadableTableError(InputError):
    """A file that is not a table of the format it claims, or cannot be opened (what is wrong,
    and where)."""


class TableTooLargeError(InputError):
    """A table over one of the reading limits (:class:`~pipelines.io.limits.ReadLimits`: what,
    the limit, and its setting)."""


class ModelNameError(InputError):
    """A model name that BentoML would not store: checked before it becomes part of a path."""


class ModelNotFoundError(InputError):
    """No saved model has this tag (BentoML's ``NotFound``, wrapped by
    :mod:`pipelines.registry.bentoml_store`)."""


class NoProductionModel(ModelNotFoundError):  # noqa: N818 (a state, like NotFound)
    """A bare model name was asked for its production model and none was promoted.

    Arguments:
        name: the model name.
        near: saved or promoted names that differ from it only in case.
    """

    def __init__(self, name: str, near: Sequence[str] = ()) -> None:
        problem = (f"no production model for {name}; promote one with "
                   f"`flowad promote {name}:VERSION`")
        if near:
            problem += f" (names differing only in case: {', '.join(near)})"
        super().__init__(problem)
        self.name = name


class ModelCheckError(InputError):
    """A saved model that must not be served or promoted: its files do not load, its weights
    are not finite, or it does not reproduce its reference scores.

    Arguments:
        tag: the model's tag.
        problem: what failed, in words.
        action: what could not be done, written before the tag.
    """

    def __init__(self, tag: str, problem: str, action: str = "model check failed for") -> None:
        super().__init__(problem)
        self.tag, self.action = tag, action

    def detail(self) -> str:
        return f"{self.action} {self.tag}: {self.problem}"


class DamagedPointerError(InputError):
    """A production pointer file that cannot be read: promoting a tag rewrites it.

    Arguments:
        name: the model name.
        path: the pointer file.
        problem: what is wrong with it.
    """

    def __init__(self, name: str, path: str, problem: str) -> None:
        super().__init__(problem)
        self.name, self.path = name, path

    def detail(self) -> str:
        return (f"the production pointer of {self.name} ({self.path}) is damaged: "
                f"{self.problem}; `flowad promote {self.name}:VERSION` rewrites it")


class ProductionChanged(FlowadError):  # noqa: N818 (a state, like NotFound)
    """The production model changed since the caller compared against it."""


class TrainingError(FlowadError, RuntimeError):
    """Training could not recover from non-finite losses."""
