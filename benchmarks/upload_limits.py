"""A ``/score_file`` worker's peak RSS and answer time for the two amplification cases of
issue 25 (item 4), against a real ``bentoml serve``.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/upload_limits.py``. To measure code from
before the limits, export that commit and run its copy of this script with the same venv:
``git archive <commit> | tar -x -C /tmp/before && cp benchmarks/upload_limits.py
/tmp/before/benchmarks/ && cd /tmp/before && PYTHONPATH=$PWD /path/to/.venv/bin/python
benchmarks/upload_limits.py``.

Trains a quick one-flow detector on the bundled example data, serves it with one front-end
worker (``FLOWAD_SCORING=local``), then uploads, sampling the worker's RSS every 20 ms:

* ``bomb.parquet``: 40 example records whose ``channel`` (a text column of the model) holds
  20 million characters each, a different string per row, zstd: ~27 KB that decode to
  ~800 MB of text (the footer says so).
* ``dict-bomb.parquet``: the same with one string in every row: ~6 KB whose footer says
  20 MB, dictionary-encoded, that expand to ~800 MB.
* ``wide.csv``: a header of 300,000 columns and one row, ~2.9 MB.

Each file goes to a freshly started server. Prints, per file: its size, the worker's RSS
before, its peak during the request, the growth, the seconds to the answer, and the answer.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.soak import (
    DATA,
    EXCLUDE,
    MODEL_NAME,
    Config,
    free_port,
    served,
    wait_ready,
)
from benchmarks.upload_memory import MIB, front_worker, peak_rss
from pipelines import Detector
from pipelines.registry.promotion import promote
from pipelines.registry.store import save_detector

BOMB_ROWS, BOMB_CHARS = 40, 20_000_000
WIDE_COLUMNS = 300_000


def write_files(folder: Path) -> list[Path]:
    """The two uploads, written into ``folder``."""
    import pandas as pd

    records = pd.read_csv(DATA).head(BOMB_ROWS).drop(columns=EXCLUDE)
    bomb = folder / "bomb.parquet"
    distinct = [f"{row:02d}" + "x" * (BOMB_CHARS - 2) for row in range(BOMB_ROWS)]
    records.assign(channel=distinct).to_parquet(bomb, compression="zstd")
    dictionary = folder / "dict-bomb.parquet"
    records.assign(channel="x" * BOMB_CHARS).to_parquet(dictionary, compression="zstd")
    wide = folder / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(WIDE_COLUMNS)) + "\n"
                    + ",".join(["1"] * WIDE_COLUMNS) + "\n")
    return [bomb, dictionary, wide]


def main() -> None:
    import pandas as pd

    frame = pd.read_csv(DATA)
    detector = Detector(exclude=EXCLUDE, flow_options={"members": 1},
                        train_options={"max_epochs": 3}).fit(frame[frame.is_fraud == 0])
    promote(save_detector(detector, MODEL_NAME), reason="upload limits benchmark")
    work = Path(tempfile.mkdtemp(prefix="flowad-upload-limits-"))
    files = write_files(work)
    print(f"{'file':>17} {'KB':>7} {'RSS before':>11} {'peak':>8} {'growth':>8} {'seconds':>8}"
          "  answer")
    for path in files:  # a fresh server each: a worker's RSS does not shrink after a peak
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with served(Config(quick=True, workers=1), port, work / f"serve-{path.stem}.log") as server:
            wait_ready(base, server)
            worker = front_worker(server.pid)
            before = worker.memory_info().rss
            peak, stop = [before], threading.Event()
            sampler = threading.Thread(target=peak_rss, args=(worker, stop, peak), daemon=True)
            sampler.start()
            start = time.perf_counter()
            with open(path, "rb") as file:
                response = httpx.post(f"{base}/score_file", timeout=600,
                                      files={"file": (path.name, file)})
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
        growth = peak[0] - before
        print(f"{path.name:>17} {path.stat().st_size / 1024:>7.0f} {before / MIB:>10.0f}M "
              f"{peak[0] / MIB:>7.0f}M {growth / MIB:>7.0f}M {seconds:>8.2f}  "
              f"{response.status_code}: {response.text[:110]}")
    print(f"server log and files: {work}")


if __name__ == "__main__":
    main()
