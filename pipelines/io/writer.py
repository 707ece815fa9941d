"""Writing a table all or nothing: chunks go to a hidden temporary file beside the target,
renamed onto it when complete.

A process killed with SIGKILL leaves its hidden file, never a truncated target; the next
writer of the same target on this host removes it (:mod:`pipelines.io.processes`). A target
that is a symbolic link is written where the link points (the link stays a link:
``current.csv -> runs/...`` layouts survive); an existing target that is not a regular file (a
FIFO, a directory, a device) is refused, never replaced. CSV output escapes formulas
(:mod:`pipelines.io.formulas`).
"""

from __future__ import annotations

import glob
import os
import stat
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import InputError
from pipelines.io.formulas import escape_formulas
from pipelines.io.processes import owner_is_gone, owner_tag
from pipelines.io.tables import table_format


class TableWriter:
    """Appends DataFrame chunks to a CSV or Parquet file (the schema of the first chunk), all
    or nothing (the module's docstring): the target is replaced only when the ``with`` block
    ends without an error; on an error the temporary file is removed and the target is left
    as it was.

    Arguments:
        path: the target ``.csv`` or ``.parquet`` file.
        escape_formulas: in CSV output, prefix text cells that a spreadsheet would run as
            formulas with ``'`` (:mod:`pipelines.io.formulas`).
    """

    def __init__(self, path: str | Path, *, escape_formulas: bool = True) -> None:
        self.format = table_format(path)
        self.path = _regular_target(Path(path))
        self.escape_formulas = escape_formulas and self.format == "csv"
        if not self.path.parent.is_dir():  # else the error would name the hidden file
            raise InputError(f"no such directory {str(self.path.parent)!r}", file=str(path))
        prefix = f".{self.path.name}."
        for stale in self.path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
            if owner_is_gone(stale.name, prefix):
                stale.unlink(missing_ok=True)
        self.temp_path = self.path.with_name(f"{prefix}{owner_tag()}-{uuid.uuid4().hex[:8]}.tmp")
        self._parquet: pq.ParquetWriter | None = None
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        """Appends ``frame``'s rows.

        Raises:
            InputError: the output cannot be written (its folder is not writable, the disk
                is full), naming it.
        """
        try:
            if self.format == "csv":
                if self.escape_formulas:
                    frame = escape_formulas(frame)
                frame.to_csv(self.temp_path, mode="a" if self._started else "w",
                              header=not self._started, index=False)
            else:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if self._parquet is None:
                    self._parquet = pq.ParquetWriter(self.temp_path, table.schema)
                self._parquet.write_table(table.cast(self._parquet.schema))
        except OSError as error:
            raise InputError(f"cannot write the output: {error.strerror or error}",
                             file=str(self.path)) from error
        self._started = True

    def close(self) -> None:
        """Finishes the file and moves it onto the target."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._started:
            os.replace(self.temp_path, self.path)

    def discard(self) -> None:
        """Removes the temporary file; the target is untouched."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # KeyboardInterrupt too: never leave a partial table that looks complete
            self.discard()


FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a device",
              stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def _regular_target(path: Path) -> Path:
    """The file an output at ``path`` is written to: where a symbolic link points (followed to
    its end; a dangling link's target is created), refused if it exists and is not a regular
    file."""
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        shown_target = "" if target == path.absolute() else f" (via the link to {target})"
        raise InputError(f"{path} is {kind}{shown_target}, not a regular file: refusing to "
                         "write the output there")
    return target
