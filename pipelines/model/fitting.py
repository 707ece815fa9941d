"""How ``Detector.fit`` uses the rows it is given: its parameters checked first, the rows split
into training, validation and calibration (or into folds, :mod:`pipelines.model.crossconformal`),
each part's flows trained, and the reference records kept to prove that a loaded model scores
as when saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from sklearn.utils import check_random_state

from flowmodels import Flow, FlowMixture
from pipelines.errors import InputError
from pipelines.model.calibration import min_calibration_rows
from pipelines.model.crossconformal import fold_parts
from pipelines.model.defaults import CALIBRATIONS, DEFAULT_TARGET_FPR
from pipelines.model.device import resolve_device
from pipelines.model.training import Parallel, TrainConfig, TrainResult, estimate_nll, train_flow
from pipelines.tabular.encoder import TabularEncoder
from pipelines.tabular.schema import Schema

REFERENCE_ROWS = 64  # calibration records kept to prove a loaded model scores as when saved
Rows = NDArray[np.intp]


def check_params(params: Mapping[str, Any]) -> tuple[int, torch.device]:
    """Rejects parameters that could only fail later (after training, or inside torch), with
    a message naming the parameter; returns the seed ``random_state`` stands for (None or a
    ``numpy.random.RandomState``: drawn from it, as scikit-learn does) and the device.

    Arguments:
        params: the detector's ``get_params()``.

    Raises:
        InputError: a parameter out of its range, naming it.
        TypeError: ``exclude`` given as one string.
    """
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InputError(message)

    model, target_fpr, contamination = (params["model"], params["target_fpr"],
                                        params["contamination"])
    need(model in ("realnvp", "ffjord"), f"model must be 'realnvp' or 'ffjord', got {model!r}")
    need(isinstance(target_fpr, int | float) and 0 < target_fpr < 1,
         f"target_fpr must be in (0, 1), got {target_fpr!r}")
    need(params["calibration"] in CALIBRATIONS,
         f"calibration must be one of {CALIBRATIONS}, got {params['calibration']!r}")
    if contamination is not None:
        need(isinstance(contamination, int | float) and 0 < contamination <= 0.5,
             f"contamination must be in (0, 0.5] (PyOD's range), got {contamination!r}")
        need(target_fpr == DEFAULT_TARGET_FPR,
             f"contamination={contamination!r} and target_fpr={target_fpr!r} are two "
             "thresholding rules: pass one (contamination thresholds the training scores, with "
             "no false-positive guarantee; target_fpr is conformal)")
        need(params["calibration"] != "cross",
             "contamination thresholds the training scores: calibration='cross' (a target "
             "FPR's rule) does not apply; leave calibration='auto'")
    validation, calibration = params["validation_fraction"], params["calibration_fraction"]
    need(0 < validation < 1, f"validation_fraction must be in (0, 1), got {validation!r}")
    need(0 <= calibration < 1 and validation + calibration < 1,
         "calibration_fraction must be in [0, 1) and leave rows to train on: got "
         f"{calibration!r} with validation_fraction {validation!r}")
    exclude = params["exclude"]
    if isinstance(exclude, str):
        raise TypeError(f"exclude takes a list of column names, got the string {exclude!r} "
                        f"(write exclude=[{exclude!r}])")
    n_threads = params["n_threads"]
    need(n_threads is None or (isinstance(n_threads, int) and n_threads >= 0),
         f"n_threads must be None or an integer >= 0 (0: torch's setting), got {n_threads!r}")
    members = (params["flow_options"] or {}).get("members", 1)
    need(isinstance(members, int) and members >= 1,
         f"flow_options['members'] must be an integer >= 1, got {members!r}")
    device = resolve_device(params["device"])
    need(device.type != "cuda" or torch.cuda.is_available(),
         f"device={params['device']!r}, but CUDA is not available here: use 'auto' (CUDA when "
         "present) or 'cpu'")
    random_state = params["random_state"]
    if isinstance(random_state, int | np.integer):
        return int(random_state), device
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max)), device


def split_rows(n: int, fractions: tuple[float, float], seed: int) -> tuple[Rows, Rows, Rows]:
    """Seeded split of row positions into (train, validation, calibration).

    Arguments:
        n: the rows.
        fractions: the validation share of the rows left after calibration, and the
            calibration share of all rows.
        seed: the split's seed.
    """
    validation_fraction, calibration_fraction = fractions
    order = np.random.default_rng(seed).permutation(n)
    n_cal = round(calibration_fraction * n)
    n_val = round(validation_fraction * (n - n_cal))
    return order[n_cal + n_val :], order[n_cal : n_cal + n_val], order[:n_cal]


@dataclass
class Split:
    """How ``fit`` uses its rows.

    Arguments:
        cross: cross-conformal calibration (every row calibrates, under its fold's model).
        parts: per flow model, its (training rows, validation rows): one without folds, one
            per fold with them.
        calibration_rows: the rows held out for calibration (none under cross-conformal
            calibration, or with separate calibration records).
        fold: each row's fold under cross-conformal calibration, else None.
    """

    cross: bool
    parts: list[tuple[Rows, Rows]]
    calibration_rows: Rows
    fold: Rows | None = None


def wants_cross_conformal(params: Mapping[str, Any], n: int, separate_calibration: bool
                          ) -> bool:
    """Whether ``fit`` calibrates cross-conformally: asked for, or (``calibration="auto"``)
    when a calibration split of ``n`` rows is too small for ``target_fpr`` (and no separate
    calibration records, ``contamination`` or ``calibration_fraction=0`` says otherwise).

    Arguments:
        params: the detector's parameters.
        n: the rows given to ``fit``.
        separate_calibration: ``fit`` was given calibration records of their own.
    """
    if separate_calibration or params["contamination"] is not None:
        return False
    if params["calibration"] == "cross":
        return True
    fraction = params["calibration_fraction"]
    return (params["calibration"] == "auto" and fraction > 0
            and round(fraction * n) < min_calibration_rows(params["target_fpr"]))


def plan_split(params: Mapping[str, Any], n: int, separate_calibration: bool, seed: int
               ) -> Split:
    """The :class:`Split` of ``n`` rows.

    Arguments:
        params: the detector's parameters.
        n: the rows given to ``fit``.
        separate_calibration: ``fit`` was given calibration records of their own.
        seed: the split's seed.

    Raises:
        InputError: too few rows to train and validate.
    """
    split = None
    if wants_cross_conformal(params, n, separate_calibration):
        fold, parts = fold_parts(n, params["validation_fraction"], seed)
        # a dozen rows: too few for folds, while a split still trains (and cannot flag)
        if params["calibration"] == "cross" or min(len(r) for p in parts for r in p) >= 2:
            split = Split(True, parts, np.empty(0, dtype=np.intp), fold)
    if split is None:
        fraction = 0.0 if separate_calibration else params["calibration_fraction"]
        train, validation, calibration = split_rows(
            n, (params["validation_fraction"], fraction), seed)
        split = Split(False, [(train, validation)], calibration)
    if min(len(rows) for part in split.parts for rows in part) < 2:
        raise InputError(f"too few rows to train and validate: n_samples = {n}")
    return split


def training_tensors(encoder: TabularEncoder, train: pd.DataFrame, validation: pd.DataFrame,
                     device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """What :func:`~pipelines.model.training.train_flow` takes of a train / validation split:
    the training rows at their cells' lower corners, the cell widths, the validation rows and
    their log-Jacobians, and the training rows' mean log-Jacobian.

    Arguments:
        encoder: the fitted encoder.
        train: the training rows.
        validation: the validation rows.
        device: where the flow trains.
    """
    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)

    train_lower, train_log_jacobian = encoder.transform(train, offset=0.0)
    val_x, val_log_jacobian = encoder.transform(validation)
    width = encoder.dequantization_width_
    if any(len(atoms) for atoms in encoder.atoms_):  # widths differ between rows
        width = encoder.cell_widths(train)
    return (tensor(train_lower), tensor(width), tensor(val_x), tensor(val_log_jacobian),
            float(np.mean(train_log_jacobian)))


def train_parts(flow: Flow | FlowMixture, split: Split, data: pd.DataFrame,
                encoder: TabularEncoder, config: TrainConfig, members_per_part: int,
                parallel: Parallel | None, device: torch.device
                ) -> tuple[list[TrainResult], list[float]]:
    """Trains each part's flows (the mixture's members, part-major), each with its own seed
    and noise; returns their results and each part's validation NLL.

    Arguments:
        flow: the detector's flow (a mixture of every part's members, or one flow).
        split: the parts.
        data: the rows given to ``fit``.
        encoder: the fitted encoder.
        config: the training configuration.
        members_per_part: flows per part.
        parallel: data-parallel training, or None.
        device: where the flows train.
    """
    members = flow.members() if isinstance(flow, FlowMixture) else [flow]
    results: list[TrainResult] = []
    validation_nll = []
    for p, (train_rows, val_rows) in enumerate(split.parts):
        part_members = members[p * members_per_part : (p + 1) * members_per_part]
        train_t, width_t, val_t, val_jacobian_t, train_jacobian_mean = training_tensors(
            encoder, data.iloc[train_rows], data.iloc[val_rows], device)
        results += [
            train_flow(member, train_t, width_t, val_t, val_jacobian_t,
                       replace(config, seed=config.seed + len(results) + k),
                       train_log_jacobian_mean=train_jacobian_mean, parallel=parallel)
            for k, member in enumerate(part_members)
        ]
        part_flow = part_members[0] if len(part_members) == 1 else FlowMixture(part_members)
        validation_nll.append(estimate_nll(part_flow if split.cross else flow, val_t,
                                           val_jacobian_t, trim=config.effective_validation_trim))
    flow.eval()
    return results, validation_nll


def reference_sample(schema: Schema, records: pd.DataFrame, scores: np.ndarray
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """Up to ``REFERENCE_ROWS`` calibration records with finite scores, and those scores: saved
    with the model so that a loaded copy can prove it scores the same
    (:func:`pipelines.registry.verify.verify_detector`). The records hold the input columns as
    the schema reads them (floats, and text or None), which Parquet stores whatever the
    caller's dtypes were (an object column of ints and strings is text to the model, and Arrow
    refuses to write it as given).

    Arguments:
        schema: the detector's schema.
        records: the calibration records, in the order of ``scores``.
        scores: their anomaly scores.
    """
    keep = np.flatnonzero(np.isfinite(scores))[:REFERENCE_ROWS]
    if not len(keep):
        return records.iloc[:0][schema.names], scores[keep].astype(np.float64)
    values = schema.check(records.iloc[keep])
    sample = pd.DataFrame({name: values[name] for name in schema.names})
    return sample, scores[keep].astype(np.float64)


def fit_metrics(split: Split, n_calibration: int, results: Sequence[TrainResult],
                validation_nll: Sequence[float], method: str | None) -> dict[str, Any]:
    """What ``fit`` records of the fit in ``metrics_`` (the seed and the time are added by it).

    Arguments:
        split: the rows' split.
        n_calibration: the calibration rows.
        results: each flow's training result.
        validation_nll: each part's validation NLL.
        method: the calibration method, or None.
    """
    return {
        "n_train": len(split.parts[0][0]),
        "n_validation": len(split.parts[0][1]),
        "n_calibration": n_calibration,
        "calibration": method,
        "members": len(results),
        "best_epoch": ([r.best_epoch for r in results] if len(results) > 1
                       else results[0].best_epoch),
        "epochs": sum(len(r.history) for r in results),
        "val_nll": float(np.mean(validation_nll)),
        "recovered_nonfinite": sum(r.recovered_nonfinite for r in results),
    }
