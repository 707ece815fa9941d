"""A uniform sample of at most N rows of a table streamed in chunks, in memory bounded by N.

Training fits on this sample (``flowad train``/``retrain --max-rows``): every row of the table is
equally likely to be in it, whatever its size, and the encoder's statistics (scaling, category
levels, atoms) come from the sample, so from the same single pass.

The method is reservoir sampling (Vitter's Algorithm R, "Random sampling with a reservoir",
1985), a chunk at a time: the first N rows fill the reservoir; row ``j`` (0-based) after them
replaces a uniformly drawn slot with probability ``N / (j + 1)``. The reservoir is one
preallocated array per column, written in place, so memory is N rows plus one chunk whatever
the table's size (``benchmarks/sampling_memory.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

from pipelines.errors import InputError
from pipelines.io.labels import parse_labels
from pipelines.io.tables import iter_table

DEFAULT_MAX_ROWS = 1_000_000


class Reservoir:
    """Keeps a uniform sample of at most ``max_rows`` of the rows added to it.

    A table of at most ``max_rows`` rows is kept whole and in its order, so small tables train
    exactly as they did before sampling existed; beyond that the sample's order means nothing.

    Arguments:
        max_rows: the sample size N.
        seed: seeds the draws.
    """

    def __init__(self, max_rows: int, seed: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.max_rows = max_rows
        self.rows_seen = 0
        self._rng = np.random.default_rng(seed)
        self._columns: dict[str, np.ndarray] = {}
        # each sampled row's index label in its chunk (a table's row number: iter_table), so
        # that an error about a sampled row can name the row of the table
        self._labels = np.empty(max_rows, dtype=np.int64)

    def add(self, chunk: pd.DataFrame) -> None:
        """Offers the rows of ``chunk`` (in table order) to the sample.

        Arguments:
            chunk: the next rows of the table, with the columns of the first chunk.
        """
        if not self._columns:
            self._columns = {name: np.empty(self.max_rows, dtype=chunk[name].to_numpy().dtype)
                             for name in chunk.columns}
        elif list(chunk.columns) != list(self._columns):
            raise InputError(f"columns changed from {list(self._columns)} to "
                             f"{list(chunk.columns)} at row {self.rows_seen}")
        rows, slots = self._draw(len(chunk))
        self.rows_seen += len(chunk)
        if pd.api.types.is_integer_dtype(chunk.index.dtype):
            self._labels[slots] = chunk.index.to_numpy()[rows]
        else:  # a chunk without row numbers: rows counted as they come
            self._labels[slots] = self.rows_seen - len(chunk) + rows
        for name, target in self._columns.items():
            values = chunk[name].to_numpy()
            if values.dtype != target.dtype:  # e.g. ints, then a chunk with a missing value
                target = self._columns[name] = target.astype(
                    np.result_type(target.dtype, values.dtype))
            target[slots] = values[rows]

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the next ``n`` that enter the sample, and the slots they take.

        A slot drawn twice in the chunk keeps the later row, as one row after the other would.
        """
        position = np.arange(self.rows_seen, self.rows_seen + n)
        filling = position < self.max_rows
        enter = filling | (self._rng.random(n) * (position + 1) < self.max_rows)
        rows = np.flatnonzero(enter)
        slots = np.where(filling[rows], position[rows],
                         self._rng.integers(0, self.max_rows, len(rows)))
        last_slots, last = np.unique(slots[::-1], return_index=True)
        return rows[::-1][last], last_slots

    def sample(self) -> pd.DataFrame:
        """The sampled rows (views of the reservoir: no copy)."""
        size = min(self.rows_seen, self.max_rows)
        return pd.DataFrame({name: column[:size] for name, column in self._columns.items()},
                            index=pd.Index(self._labels[:size]), copy=False)


def sample_rows(chunks: Iterable[pd.DataFrame], max_rows: int = DEFAULT_MAX_ROWS,
                seed: int = 0) -> tuple[pd.DataFrame, int]:
    """A uniform sample of at most ``max_rows`` rows of the chunks, and the rows seen.

    Arguments:
        chunks: the table, chunk after chunk.
        max_rows: the sample size N.
        seed: seeds the sample.
    """
    reservoir = Reservoir(max_rows, seed)
    for chunk in chunks:
        reservoir.add(chunk)
    return reservoir.sample(), reservoir.rows_seen


def last_rows(chunks: Iterable[pd.DataFrame], n: int) -> Iterator[pd.DataFrame]:
    """The last ``n`` rows of the chunks (``retrain --window-rows``), holding about ``n`` rows
    plus a chunk.

    Arguments:
        chunks: the table, chunk after chunk.
        n: rows to keep from the end.
    """
    window: deque[pd.DataFrame] = deque()
    held = 0
    for chunk in chunks:
        window.append(chunk)
        held += len(chunk)
        while held - len(window[0]) >= n:
            held -= len(window.popleft())
    if window and held > n:
        window[0] = window[0].iloc[held - n :]
    yield from window


def training_sample(data: str, max_rows: int, seed: int, *, label: str | None = None,
                    window_rows: int | None = None) -> tuple[pd.DataFrame, int]:
    """A uniform sample of at most ``max_rows`` rows of ``data``, streamed in chunks, and the
    rows it was drawn from (``flowad train``/``retrain``).

    Arguments:
        data: a file, directory or URI.
        max_rows: the sample size.
        seed: seeds the sample.
        label: a label column: rows it marks as anomalies are dropped before sampling.
        window_rows: sample only the last this many rows.
    """
    chunks: Iterable[pd.DataFrame] = iter_table(data)
    if window_rows:
        chunks = last_rows(chunks, window_rows)
    if label is not None:
        chunks = (chunk[parse_labels(chunk, label) == 0] for chunk in chunks)
    return sample_rows(chunks, max_rows, seed)
