"""A fitted :class:`~pipelines.tabular.encoder.TabularEncoder` as one file: skops, no pickle.

Loading accepts only the allow-listed types in ``TRUSTED_TYPES``; the file is refused before
anything in it is built otherwise. An encoder loads to transform bit-identically to the one
saved, whichever flowad saved it: :func:`upgrade` brings an older file's state to the current
one, keeping the rules it was fitted under (so its model scores as it did when saved).

``skops.io`` is imported by the functions that read and write files, not with this module: it
imports scikit-learn's array-API shims, torch among them, and ``pipelines.tabular`` stays
importable without torch.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.tabular.encoder import TabularEncoder
from pipelines.tabular.schema import Schema
from pipelines.tabular.support import LegacySupport, Support

FORMAT = "flowad.TabularEncoder"
FORMAT_VERSION = 1
# Every type a saved encoder may contain beyond skops' built-in defaults; anything else in a file
# is refused before loading. The scikit-learn classes are listed too in case skops stops
# trusting them by default.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "numpy.ndarray",
        "sklearn.impute._base.MissingIndicator",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.preprocessing._data.QuantileTransformer",
        "sklearn.preprocessing._data.RobustScaler",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
    }
)
# Fitted sub-transformers, all saved by name (None where a group of columns is absent).
PARTS = ("cont_imputer_", "cont_scaler_", "code_imputer_", "onehot_", "indicator_", "code_scaler_")


def save_encoder(encoder: TabularEncoder, path: str | PathLike[str]) -> None:
    """Writes a fitted encoder with skops.

    Arguments:
        encoder: the fitted encoder.
        path: file to write (conventionally ``*.skops``).
    """
    import skops.io as sio

    state = {
        "format": f"{FORMAT}/{FORMAT_VERSION}",
        "params": {**encoder.get_params(), "exclude": list(encoder.exclude)},
        "schema": json.dumps(encoder.schema_.to_dict()),
        **{name: getattr(encoder, name) for name in PARTS},
        "atoms_": encoder.atoms_,
        "atom_width_": encoder.atom_width_,
        **encoder.support_.to_state(),
    }
    sio.dump(state, path)


def upgrade(state: dict[str, Any], version: int) -> dict[str, Any]:
    """The state of a saved encoder of format ``version`` as this flowad saves it.

    Format 1 gained fields without a new number; a field an older file lacks gets the value
    that keeps its rule: no atoms (saved before atoms existed), no column on a grid (before the
    grid rule), and the zero-density grid rule of then
    (:class:`~pipelines.tabular.support.LegacySupport`) for files without the support of
    discrete columns.

    Arguments:
        state: what :func:`save_encoder` wrote (read back).
        version: its format version.

    Raises:
        InputError: a version this flowad does not read.
    """
    if version != FORMAT_VERSION:
        raise InputError(f"saved in encoder format {version}; this flowad reads format "
                         f"{FORMAT_VERSION}: upgrade flowad to load it")
    state = dict(state)
    schema = Schema.from_dict(json.loads(state["schema"]))
    n_continuous = len(schema.of_kind("continuous"))
    n_codes = len(schema.of_kind("discrete", "binary"))
    state["params"] = {"atom_share": None, **state["params"]}
    state.setdefault("atoms_", [np.empty(0)] * n_continuous)
    state.setdefault("atom_width_", np.zeros(n_continuous))
    state.setdefault("on_grid_", np.zeros(n_codes, dtype=bool))
    return state


def load_encoder(path: str | PathLike[str]) -> TabularEncoder:
    """Reads an encoder :func:`save_encoder` wrote; it transforms bit-identically.

    Arguments:
        path: the file.

    Raises:
        InputError: the file holds a type outside ``TRUSTED_TYPES``, is not an encoder, or is of
            a newer format.
    """
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise InputError(f"refusing to load {path}: untrusted types {refused}")
    state = sio.load(path, trusted=untrusted)
    saved_format = state.get("format", "") if isinstance(state, dict) else ""
    name, _, version = str(saved_format).partition("/")
    if name != FORMAT or not version.isdigit():
        raise InputError(f"{path} is not a saved TabularEncoder")
    state = upgrade(state, int(version))
    params = dict(state["params"])
    params["exclude"] = tuple(params["exclude"])
    encoder = TabularEncoder(**params)
    encoder.schema_ = Schema.from_dict(json.loads(state["schema"]))
    for name in PARTS:
        setattr(encoder, name, state[name])
    encoder.atoms_ = list(state["atoms_"])
    encoder.atom_width_ = state["atom_width_"]
    encoder.on_grid_ = np.asarray(state["on_grid_"], dtype=bool)
    encoder.support_ = (Support(encoder.on_grid_, state["support_levels_"],
                                state["off_support_mass_"])
                        if "off_support_mass_" in state else LegacySupport(encoder.on_grid_))
    encoder.finish()
    return encoder
