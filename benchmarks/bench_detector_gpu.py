"""GPU scoring throughput of the default detector and of exact FFJORD, next to the H200 targets.

Run: ``python benchmarks/bench_detector_gpu.py [--batch 65536]`` (``benchmarks/gpu_check.sh``
runs it). Trains ``pipelines.Detector()`` with its defaults (RealNVP, a mixture of three flows)
briefly on synthetic data on the GPU, then prints rows/s at one batch of ``--batch`` rows:

- ``score_samples`` end to end (pandas frame in, scores out: encoding on the CPU, the flow on
  the GPU in chunks of ``SCORE_BATCH_ROWS``);
- the detector's flow alone (``log_prob`` of a tensor already on the GPU), and one member of it;
- exact FFJORD ``log_prob`` with its default solver (rk4, 8 fixed steps: its cost does not
  depend on the weights, so an untrained field times the same as a trained one).

Without CUDA it prints ``no CUDA: skipped`` and exits 0. Wall clock, median of ``--repeats``
after a warm-up, synchronised.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from flowmodels import build_flow
from pipelines import Detector

# Targets for one H200 at batch 65,536 (rows/s of exact log-likelihood).
TARGETS = {"realnvp": 50e6, "ffjord": 1e6}


def synthetic_frame(n: int, dim: int, seed: int) -> pd.DataFrame:
    """Continuous non-Gaussian records: a 4-component mixture pushed through a tanh warp."""
    rng = np.random.default_rng(seed)
    centers = 2 * rng.normal(size=(4, dim))
    x = centers[rng.integers(4, size=n)] + 0.5 * rng.normal(size=(n, dim))
    x = x + 0.5 * np.tanh(np.roll(x, 1, axis=1))
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(dim)])


def rows_per_second(call: Callable[[], object], rows: int, repeats: int) -> float:
    """Median rows/s of ``call`` after one warm-up call; CUDA synchronised around each."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    call()
    sync()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        timings.append(time.perf_counter() - start)
    return rows / statistics.median(timings)


def report(label: str, rate: float, kind: str | None = None) -> None:
    """One aligned line: rows/s, and the target next to it where there is one."""
    line = f"  {label:<44s}{rate:>14,.0f} rows/s"
    if kind is not None:
        target = TARGETS[kind]
        line += f"   target >= {target:>10,.0f}: {'meets' if rate >= target else 'BELOW'}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65_536, help="rows per scoring call")
    parser.add_argument("--dim", type=int, default=8, help="columns of the synthetic data")
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (brief)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cpu only to check this script")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA: skipped")
        return
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, batch {args.batch:,}, dim {args.dim}")

    start = time.perf_counter()
    detector = Detector(device=args.device, train_options={"max_epochs": args.epochs})
    detector.fit(synthetic_frame(args.train_rows, args.dim, seed=0))
    flow = detector.flow_
    members = getattr(flow, "components", [flow])
    print(f"default detector: {type(flow).__name__} of {len(members)} x "
          f"{type(members[0]).__name__} {detector.flow_options_}, {args.epochs} epochs on "
          f"{args.train_rows:,} rows in {time.perf_counter() - start:.1f} s, "
          f"val NLL {detector.metrics_['val_nll']:.3f}")

    frame = synthetic_frame(args.batch, args.dim, seed=1)
    x, _ = detector.encoder_.transform(frame)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
    with torch.inference_mode():
        end_to_end = rows_per_second(lambda: detector.score_samples(frame), args.batch,
                                     args.repeats)
        whole = rows_per_second(lambda: flow.log_prob(x), args.batch, args.repeats)
        one = rows_per_second(lambda: members[0].log_prob(x), args.batch, args.repeats)
    report("score_samples (DataFrame in, scores out)", end_to_end)
    report(f"flow log_prob, the {len(members)}-flow mixture", whole, "realnvp")
    report("flow log_prob, one RealNVP member", one, "realnvp")

    ffjord = build_flow("ffjord", args.dim).to(device).eval()
    with torch.inference_mode():
        rate = rows_per_second(lambda: ffjord.log_prob(x), args.batch, args.repeats)
    print(f"exact FFJORD, default solver ({ffjord.method}, step {ffjord.step_size}, NFE "
          f"{ffjord.nfe}), hidden {ffjord.hidden}, untrained:")
    report("FFJORD log_prob", rate, "ffjord")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
