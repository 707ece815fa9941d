"""A uniform sample of at most N rows of a table streamed in chunks, in memory bounded by N.

Training fits on this sample (``flowad train``/``retrain --max-rows``): every row of the table is
equally likely to be in it, whatever its size, and the encoder's statistics (scaling, category
levels, atoms) come from the sample, so from the same single pass.

The method is reservoir sampling by random keys (Efraimidis and Spirakis, "Weighted random
sampling with a reservoir", 2006, with equal weights): each row draws a key ``U(0, 1)`` and the
sample is the N rows with the smallest keys, a uniform sample without replacement. Chunk by
chunk, only rows whose key is below the N-th smallest key so far can still enter; they are
buffered and the buffer is cut back to the N smallest keys whenever it passes 2N rows, so at
most 2N rows plus one chunk are held. Over a table of n rows about ``N (1 + ln(n / N))`` rows
enter in all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd

DEFAULT_MAX_ROWS = 1_000_000


class Reservoir:
    """Keeps a uniform sample of at most ``max_rows`` of the rows added to it.

    A table of at most ``max_rows`` rows is kept whole and in its order, so small tables train
    exactly as they did before sampling existed.

    Arguments:
        max_rows: the sample size N.
        seed: seeds the keys.
    """

    def __init__(self, max_rows: int, seed: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.max_rows = max_rows
        self.rows_seen = 0
        self._rng = np.random.default_rng(seed)
        self._frames: list[pd.DataFrame] = []
        self._keys: list[np.ndarray] = []
        self._held = 0
        self._bound = 1.0  # the N-th smallest key once N rows are held: larger keys never enter

    def add(self, chunk: pd.DataFrame) -> None:
        """Offers the rows of ``chunk`` (in table order) to the sample.

        Arguments:
            chunk: the next rows of the table.
        """
        keys = self._rng.random(len(chunk))
        positions = np.arange(self.rows_seen, self.rows_seen + len(chunk))
        self.rows_seen += len(chunk)
        enter = keys < self._bound
        if not enter.any():
            return
        frame = chunk.iloc[np.flatnonzero(enter)].set_axis(positions[enter], axis=0)
        self._frames.append(frame)
        self._keys.append(keys[enter])
        self._held += len(frame)
        if self._held >= 2 * self.max_rows:
            self._cut()

    def _cut(self) -> None:
        """Keeps the ``max_rows`` smallest keys held, and lowers the entry bound to the largest
        of them."""
        frame = pd.concat(self._frames) if len(self._frames) > 1 else self._frames[0]
        keys = np.concatenate(self._keys)
        if len(keys) > self.max_rows:
            keep = np.argpartition(keys, self.max_rows - 1)[: self.max_rows]
            frame, keys = frame.iloc[keep], keys[keep]
        if len(keys) >= self.max_rows:
            self._bound = float(keys.max())
        self._frames, self._keys, self._held = [frame], [keys], len(keys)

    def sample(self) -> pd.DataFrame:
        """The sample, its rows in table order; the index is each row's position in the table."""
        if not self._frames:
            return pd.DataFrame()
        self._cut()
        return self._frames[0].sort_index()


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
