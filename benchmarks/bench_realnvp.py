"""Scoring throughput of RealNVP: rows/s of exact ``log_prob`` at batch 4096.

Run: ``.venv/bin/python benchmarks/bench_realnvp.py [--dims 8 32] [--steps 300]``.
Prints one line per (dim, untrained|trained) with the median of several timed repeats.
"""

from __future__ import annotations

import argparse
import time

import torch

from flowmodels import RealNVP


def rows_per_second(model: RealNVP, x: torch.Tensor, repeats: int) -> float:
    """Median rows/s of ``log_prob`` under inference_mode, after one warm-up call."""
    timings = []
    with torch.inference_mode():
        model.log_prob(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model.log_prob(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    timings.sort()
    return len(x) / timings[len(timings) // 2]


def synthetic_data(n: int, dim: int, seed: int) -> torch.Tensor:
    """A non-Gaussian target: a random 4-component mixture pushed through a tanh warp."""
    g = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(4, dim, generator=g)
    x = centers[torch.randint(4, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    return x + 0.5 * torch.tanh(x.roll(1, dims=1))


def train(model: RealNVP, data: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (256,))]
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}")
    for dim in args.dims:
        model = RealNVP(dim).to(args.device)
        data = synthetic_data(20_000, dim, seed=0).to(args.device)
        model.train()
        model.log_prob(data[:4096])  # data-initialises ActNorm
        model.eval()
        x = synthetic_data(args.batch, dim, seed=1).to(args.device)
        untrained = rows_per_second(model, x, args.repeats)
        nll = train(model, data, args.steps)
        trained = rows_per_second(model, x, args.repeats)
        print(
            f"RealNVP d={dim:<3d} untrained {untrained:>10,.0f} rows/s   "
            f"trained ({args.steps} steps, NLL {nll:.2f}) {trained:>10,.0f} rows/s"
        )


if __name__ == "__main__":
    main()
