"""Throughput and accuracy of exact FFJORD scoring, untrained and after a short RNODE training.

For each solver configuration: rows/s of exact ``log_prob`` at one batch under
``torch.inference_mode`` (wall clock, median of repeats; and rows per CPU-second of this process,
which is less sensitive to other busy processes when running on one thread), the NFE of that
solve, the max |log_prob error| against a float64 copy solved with dopri5 at rtol = atol = 1e-8
(held-out data; uniform outliers in [-4, 4]^d), and the largest change of a record's score between
the full batch and a batch of 64. The data: independent two-moons pairs, standardized and rotated.

Run: ``.venv/bin/python benchmarks/bench_ffjord.py --dim 8 --batch 4096 --steps 300``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from sklearn.datasets import make_moons
from torch import Tensor, nn

from flowmodels.divergence import exact_divergence
from flowmodels.ffjord import FFJORD

# (name, solver options) tried for scoring; the first is the FFJORD default.
CONFIGS: list[tuple[str, dict[str, object]]] = [
    ("rk4 step 1/8", {"method": "rk4", "step_size": 0.125}),
    ("rk4 step 1/4", {"method": "rk4", "step_size": 0.25}),
    ("rk4 step 1/10", {"method": "rk4", "step_size": 0.1}),
    ("dopri5 tol 1e-5", {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}),
    ("dopri5 1e-7/1e-6", {"method": "dopri5", "rtol": 1e-7, "atol": 1e-6}),
    ("bosh3 tol 1e-6", {"method": "bosh3", "rtol": 1e-6, "atol": 1e-6}),
]


class AutogradTraceField(nn.Module):
    """Baseline: the same field, its trace from the full Jacobian (torch.func), no closed form."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.inner = field

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.inner(t, z)

    def forward_with_divergence(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner(t, z), exact_divergence(self.inner, t, z)


def make_data(n: int, dim: int, seed: int) -> Tensor:
    """Independent two-moons pairs (plus a Gaussian column if ``dim`` is odd), standardized and
    mixed by a fixed random rotation: non-Gaussian and not axis-aligned."""
    blocks = [
        torch.from_numpy(make_moons(n, noise=0.08, random_state=seed + i)[0])
        for i in range(dim // 2)
    ]
    if dim % 2:
        blocks.append(torch.randn(n, 1, generator=torch.Generator().manual_seed(seed)))
    x = torch.cat(blocks, dim=1).float()
    x = (x - x.mean(0)) / x.std(0)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(7)))
    return x @ rotation


def train(model: FFJORD, data: Tensor, steps: int, batch: int, lam_k: float, lam_j: float) -> None:
    """Adam on ``-log_prob + RNODE`` (Finlay et al. 2020); prints progress."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        rows = data[torch.randint(0, data.shape[0], (batch,), device=data.device)]
        log_prob, kinetic, jacobian = model.training_terms(rows)
        loss = -log_prob.mean() + lam_k * kinetic.mean() + lam_j * jacobian.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"  step {step:4d}  nll {-log_prob.mean().item():7.3f}  kinetic "
                  f"{kinetic.mean().item():6.3f}  jac {jacobian.mean().item():7.3f}  nfe "
                  f"{model.nfe:3d}  {time.perf_counter() - start:6.1f}s", flush=True)


@torch.inference_mode()
def reference_log_prob(model: FFJORD, x: Tensor) -> Tensor:
    """float64 copy solved with dopri5 at rtol = atol = 1e-8."""
    ref = copy.deepcopy(model).double()
    ref.set_solver(method="dopri5", rtol=1e-8, atol=1e-8)
    return ref.log_prob(x.double())


@torch.inference_mode()
def measure(model: FFJORD, x: Tensor, outliers: Tensor, ref: Tensor, ref_out: Tensor,
            repeats: int) -> dict[str, float]:
    """Rows/s (median of ``repeats``), NFE, max errors, and the batch effect on 64 rows."""
    model.log_prob(x[:256])  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        log_prob = model.log_prob(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    nfe = model.nfe
    error_out = (model.log_prob(outliers).double() - ref_out).abs().max().item()
    batch_effect = (model.log_prob(x[:64]) - log_prob[:64]).abs().max().item()
    return {
        "rows_s": x.shape[0] / statistics.median(walls),
        "cpu_rows_s": x.shape[0] / statistics.median(cpus), "nfe": nfe,
        "error": (log_prob.double() - ref).abs().max().item(), "error_out": error_out,
        "batch_effect": batch_effect,
    }


def report(title: str, model: FFJORD, x: Tensor, outliers: Tensor, repeats: int,
           baseline: bool) -> None:
    ref, ref_out = reference_log_prob(model, x), reference_log_prob(model, outliers)
    print(f"{title}: mean log_prob {ref.mean().item():.3f} (data), "
          f"{ref_out.mean().item():.3f} (outliers); load average {os.getloadavg()[0]:.1f}")
    print(f"  {'config':24s} {'rows/s':>8s} {'cpu r/s':>8s} {'NFE':>4s} {'max err':>8s} "
          f"{'err outl':>8s} {'batch eff':>9s}")
    rows = [(name, model, options) for name, options in CONFIGS]
    if baseline:
        slow = FFJORD(model.dim, field=AutogradTraceField(model.field)).to(x.device)
        rows.append((f"{CONFIGS[0][0]}, torch.func trace", slow, CONFIGS[0][1]))
    saved = model.get_extra_state()
    for name, flow, options in rows:
        flow.set_solver(**options)
        m = measure(flow, x, outliers, ref, ref_out, repeats if flow is model else 1)
        print(f"  {name:24s} {m['rows_s']:8.0f} {m['cpu_rows_s']:8.0f} {m['nfe']:4d} "
              f"{m['error']:8.1e} {m['error_out']:8.1e} {m['batch_effect']:9.1e}", flush=True)
    model.set_extra_state(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096, help="scoring batch")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--train-tol", type=float, default=1e-3, help="dopri5 tolerance to train")
    parser.add_argument("--lambda-kinetic", type=float, default=0.05)
    parser.add_argument("--lambda-jacobian", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument("--no-baseline", action="store_true", help="skip the torch.func trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"dim {args.dim}, batch {args.batch}, hidden {args.hidden}")
    x = make_data(args.batch, args.dim, seed=1000).to(args.device)
    outliers = ((torch.rand(args.batch, args.dim) * 2 - 1) * 4).to(args.device)
    model = FFJORD(args.dim, hidden=args.hidden).to(args.device)
    report("untrained", model, x, outliers, args.repeats, baseline=not args.no_baseline)

    train_data = make_data(20_000, args.dim, seed=args.seed).to(args.device)
    default = model.get_extra_state()
    model.set_solver(method="dopri5", rtol=args.train_tol, atol=args.train_tol)
    print(f"training {args.steps} steps, batch {args.train_batch}, dopri5 tol {args.train_tol}, "
          f"lambda_k {args.lambda_kinetic}, lambda_j {args.lambda_jacobian}")
    train(model, train_data, args.steps, args.train_batch, args.lambda_kinetic,
          args.lambda_jacobian)
    model.set_extra_state(default)
    with torch.inference_mode():
        nll = -model.log_prob(x).mean().item()
    gauss = torch.distributions.MultivariateNormal(train_data.mean(0), torch.cov(train_data.T))
    print(f"held-out NLL {nll:.3f}; full-covariance Gaussian "
          f"{-gauss.log_prob(x).mean().item():.3f}")
    report("trained", model, x, outliers, args.repeats, baseline=False)


if __name__ == "__main__":
    main()
