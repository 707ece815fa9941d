"""TabularEncoder: log-Jacobian, dequantisation, policies, errors, persistence, real data."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from conftest import ADBENCH, mixed_frame
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from pipelines.errors import SchemaError
from pipelines.tabular.artifact import load_encoder, save_encoder
from pipelines.tabular.columnwise import column_log_jacobians
from pipelines.tabular.encoder import RECORD_PATH_ROWS, TabularEncoder
from pipelines.tabular.ranges import MAX_ENCODED
from pipelines.tabular.support import LegacySupport

DATA = ADBENCH


def train_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Continuous (one with missing values), discrete (one with missing), binary, categorical."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(3, 0.5, n)
    income[rng.random(n) < 0.1] = np.nan
    rooms = rng.integers(1, 6, n).astype(float)
    rooms[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "age": rng.normal(40, 12, n),
            "income": income,
            "rooms": rooms,
            "owner": rng.random(n) < 0.4,
            "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def independent_codes(df: pd.DataFrame) -> np.ndarray:
    """The code block computed by hand: rooms, owner, one-hot color + unknown, indicators."""
    rooms = df["rooms"].to_numpy()
    levels, counts = np.unique(rooms[~np.isnan(rooms)], return_counts=True)
    rooms = np.where(np.isnan(rooms), levels[np.argmax(counts)], rooms) - 1.0
    color = df["color"].to_numpy()
    onehot = [(color == level).astype(float) for level in ("blue", "green", "red")]
    return np.column_stack(
        [
            rooms,
            df["owner"].to_numpy(float),
            *onehot,
            np.zeros(len(df)),
            df["income"].isna().to_numpy(float),
            df["rooms"].isna().to_numpy(float),
        ]
    )


def code_log_scale(df: pd.DataFrame) -> float:
    """sum(log scale) of the codes: scale = std of a dequantised code c + U(0, 1)."""
    return float(np.log(np.sqrt(independent_codes(df).var(axis=0) + 1 / 12)).sum())


def on_support_log_mass(train: pd.DataFrame, records: pd.DataFrame) -> np.ndarray:
    """Per record, the sum over its observed discrete and binary values (rooms, owner) of
    log(1 - eps), eps = 1 / (2 (n + 1)) for a column's n observed training values: the share
    of a level's probability its own value keeps (pipelines.tabular.support)."""
    total = np.zeros(len(records))
    for name in ("rooms", "owner"):
        eps = 1 / (2 * (train[name].notna().sum() + 1))
        total += np.where(records[name].notna(), np.log1p(-eps), 0.0)
    return total


# ----------------------------------------------------------------------------- layout
def test_layout_names_and_widths() -> None:
    enc = TabularEncoder(exclude=("id",)).fit(train_frame())
    assert list(enc.feature_names_out_) == [
        "age",
        "income",
        "rooms",
        "owner",
        "color_blue",
        "color_green",
        "color_red",
        "color_<unknown>",
        "income_missing",
        "rooms_missing",
    ]
    assert enc.n_features_out_ == 10 and enc.n_features_in_ == 5
    width = enc.dequantization_width_
    assert width.shape == (10,)
    assert np.all(width[:2] == 0.0) and np.all(width[2:] > 0.0)
    np.testing.assert_allclose(
        width[2:], np.sqrt(independent_codes(train_frame()).var(0) + 1 / 12) ** -1
    )


def test_not_fitted_and_params() -> None:
    enc = TabularEncoder(scaling="robust", exclude=("id",))
    with pytest.raises(NotFittedError):
        enc.transform(train_frame())
    assert enc.get_params() == {
        "scaling": "robust",
        "exclude": ("id",),
        "max_discrete_levels": 20,
        "max_categories": 50,
        "atom_share": 0.01,
    }
    assert enc.fit(train_frame()) is enc
    with pytest.raises(ValueError, match="scaling"):
        TabularEncoder(scaling="minmax").fit(train_frame())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="atom_share"):
        TabularEncoder(atom_share=0.0).fit(train_frame())


# ------------------------------------------------------------------------ log-Jacobian
def test_standard_log_jacobian_and_values_match_independent_computation() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    X, log_jac = enc.transform(df)
    cont = df[["age", "income"]].to_numpy()
    expected = (-np.log(np.nanstd(cont, axis=0)).sum() - code_log_scale(df)
                + on_support_log_mass(df, df))
    np.testing.assert_allclose(log_jac, expected, rtol=1e-12)
    imputed = np.where(np.isnan(cont), np.nanmedian(cont, axis=0), cont)
    np.testing.assert_allclose(
        X[:, :2], (imputed - np.nanmean(cont, axis=0)) / np.nanstd(cont, axis=0), atol=1e-12
    )
    codes = independent_codes(df) + 0.5
    np.testing.assert_allclose(
        X[:, 2:], (codes - codes.mean(0)) / np.sqrt(codes.var(0) + 1 / 12), atol=1e-12
    )


def test_robust_log_jacobian_uses_the_iqr() -> None:
    df = train_frame()
    _, log_jac = TabularEncoder(scaling="robust", exclude=("id",)).fit(df).transform(df)
    cont = df[["age", "income"]].to_numpy()
    iqr = np.subtract(*np.nanpercentile(cont, [75, 25], axis=0))
    np.testing.assert_allclose(log_jac, -np.log(iqr).sum() - code_log_scale(df)
                               + on_support_log_mass(df, df), rtol=1e-12)


def test_quantile_log_jacobian_is_the_derivative_and_extrapolates() -> None:
    df = train_frame(600)
    enc = TabularEncoder(scaling="quantile", exclude=("id",)).fit(df)
    rng = np.random.default_rng(5)
    probe = df.sample(8, random_state=1).reset_index(drop=True)
    # Random values, not training values: with n_quantiles = n these are the CDF's knots, where
    # a central difference averages two slopes.
    for name in ("age", "income"):
        low, high = np.nanpercentile(df[name], [5, 95])
        probe[name] = rng.uniform(low, high, len(probe))
    top, spread = df["age"].max(), df["age"].std()
    probe.loc[0, "age"] = top + 3 * spread  # beyond the training range
    probe.loc[1, "age"] = df["age"].min() - 2 * spread  # below it
    X, log_jac = enc.transform(probe)
    assert np.all(np.isfinite(X)) and np.all(np.isfinite(log_jac))

    derivative_logs = np.zeros(len(probe))
    for j, name in enumerate(["age", "income"]):
        h = 1e-6 * (1 + probe[name].abs().to_numpy())
        up, down = probe.copy(), probe.copy()
        up[name] += h
        down[name] -= h
        slope = (enc.transform(up)[0][:, j] - enc.transform(down)[0][:, j]) / (2 * h)
        derivative_logs += np.log(slope)
    np.testing.assert_allclose(
        log_jac, derivative_logs - code_log_scale(df) + on_support_log_mass(df, probe), atol=1e-5)

    # Not clipped: further out encodes further out, beyond the encoding of the training max.
    edge = probe.iloc[[0, 0, 0]].reset_index(drop=True)
    edge["age"] = [top, top + 3 * spread, top + 6 * spread]
    z = enc.transform(edge)[0][:, 0]
    assert z[0] < z[1] < z[2]
    assert X[1, 0] < enc.transform(edge.assign(age=df["age"].min()))[0][0, 0]

    # Inside the range the map is scikit-learn's QuantileTransformer (no ties here).
    ages = df[["age"]].to_numpy()
    # one quantile per value of the column with the fewest observed values (income)
    n_quantiles = int(df["income"].notna().sum())
    reference = QuantileTransformer(n_quantiles=n_quantiles, output_distribution="normal")
    reference.fit(ages)
    inner = probe.iloc[2:]
    np.testing.assert_allclose(
        X[2:, 0], reference.transform(inner[["age"]].to_numpy())[:, 0], atol=1e-9
    )


def test_quantile_with_ties_and_many_missing_values_stays_finite() -> None:
    rng = np.random.default_rng(2)
    spike = np.where(rng.random(500) < 0.4, 0.0, rng.exponential(size=500))  # a point mass at 0
    sparse = np.where(rng.random(500) < 0.7, np.nan, rng.normal(size=500))
    df = pd.DataFrame({"spike": spike, "sparse": sparse})
    enc = TabularEncoder(scaling="quantile").fit(df)
    assert [spec.kind for spec in enc.schema_.columns] == ["continuous", "continuous"]
    probe = pd.DataFrame({"spike": [0.0, -1.0, 0.5, 100.0], "sparse": [np.nan, -9.0, 0.1, 9.0]})
    for frame in (df, probe):
        X, log_jac = enc.transform(frame)
        assert np.all(np.isfinite(X)) and np.all(np.isfinite(log_jac))


# ------------------------------------------------------------------------ dequantisation
def test_offsets_give_cell_corners_and_midpoints() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    X0, log0 = enc.transform(df, offset=0.0)
    X5, log5 = enc.transform(df, offset=0.5)
    width = enc.dequantization_width_
    discrete = width > 0
    cells = X0[:, discrete] / width[discrete]
    cells -= cells.min(axis=0)  # removes the scaler's shift
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-9)
    codes = independent_codes(df)
    np.testing.assert_allclose(cells, codes - codes.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(X5 - X0, np.broadcast_to(0.5 * width, X0.shape), atol=1e-12)
    assert np.array_equal(X0[:, ~discrete], X5[:, ~discrete])
    assert np.array_equal(log0, log5)


def spiky_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """``spike``: 40% of rows exactly 2.0, the rest continuous; ``smooth``: no repeats;
    ``rooms``: a discrete column."""
    rng = np.random.default_rng(seed)
    spike = np.where(rng.random(n) < 0.4, 2.0, rng.normal(0, 3, n))
    spike[:3] = 7.5  # a repeated value below the 1% share: not an atom
    return pd.DataFrame(
        {
            "spike": spike,
            "smooth": rng.normal(10, 2, n),
            "rooms": rng.integers(1, 6, n).astype(float),
        }
    )


@pytest.mark.parametrize("scaling", ["standard", "robust"])
def test_atoms_of_continuous_columns_get_one_scott_cell(scaling: str, tmp_path: Path) -> None:
    df = spiky_frame()
    enc = TabularEncoder(scaling=scaling).fit(df)  # type: ignore[arg-type]
    spike = df["spike"].to_numpy()
    assert [list(atoms) for atoms in enc.atoms_] == [[2.0], []]
    h = 3.49 * spike.std() * len(spike) ** (-1 / 3)  # Scott's bin width, by hand
    np.testing.assert_allclose(enc.atom_width_[0], h, rtol=1e-12)

    X0, log0 = enc.transform(df, offset=0.0)
    X5, log5 = enc.transform(df, offset=0.5)
    at_atom = spike == 2.0
    q25, median, q75 = np.percentile(spike, [25, 50, 75])
    center, scale = (spike.mean(), spike.std()) if scaling == "standard" else (median, q75 - q25)
    width_encoded = h / scale  # the scaler's unit
    np.testing.assert_allclose(X5[at_atom, 0] - X0[at_atom, 0], 0.5 * width_encoded, rtol=1e-9)
    assert np.array_equal(X0[~at_atom, 0], X5[~at_atom, 0])
    assert np.array_equal(X0[:, 1], X5[:, 1]) and np.array_equal(log0, log5)
    np.testing.assert_allclose(X5[:, 0], (spike - center) / scale, atol=1e-12)

    widths = enc.cell_widths(df)
    expected = np.tile(enc.dequantization_width_, (len(df), 1))
    expected[at_atom, 0] = width_encoded
    np.testing.assert_allclose(widths, expected, rtol=1e-9)

    save_encoder(enc, tmp_path / "enc.skops")
    loaded = load_encoder(tmp_path / "enc.skops")
    assert np.array_equal(loaded.cell_widths(df), widths)
    assert np.array_equal(loaded.transform(df, offset=0.0)[0], X0)


@pytest.mark.parametrize(
    "options", [{"atom_share": None}, {"scaling": "quantile"}], ids=["off", "quantile"]
)
def test_no_atoms_when_off_or_under_quantile_scaling(options: dict[str, object]) -> None:
    df = spiky_frame()
    enc = TabularEncoder(**options).fit(df)  # type: ignore[arg-type]
    assert all(len(atoms) == 0 for atoms in enc.atoms_)
    widths = enc.cell_widths(df)
    assert np.array_equal(widths, np.tile(enc.dequantization_width_, (len(df), 1)))
    assert np.array_equal(enc.transform(df, offset=0.0)[0][:, :2], enc.transform(df)[0][:, :2])


def test_encoders_saved_before_atoms_load_without_atoms(tmp_path: Path) -> None:
    df = spiky_frame()
    enc = TabularEncoder(atom_share=None).fit(df)
    save_encoder(enc, tmp_path / "enc.skops")
    state = sio.load(tmp_path / "enc.skops", trusted=sio.get_untrusted_types(
        file=tmp_path / "enc.skops"))
    del state["atoms_"], state["atom_width_"], state["params"]["atom_share"]
    sio.dump(state, tmp_path / "old.skops")
    old = load_encoder(tmp_path / "old.skops")
    assert old.atom_share is None and all(len(atoms) == 0 for atoms in old.atoms_)
    assert np.array_equal(old.transform(df)[0], enc.transform(df)[0])


# ------------------------------------------------------------ determinism and persistence
@pytest.mark.parametrize("scaling", ["standard", "quantile"])
def test_deterministic_and_save_load_bit_identical(scaling: str, tmp_path: Path) -> None:
    df = train_frame()
    enc = TabularEncoder(scaling=scaling, exclude=("id",)).fit(df)  # type: ignore[arg-type]
    X, log_jac = enc.transform(df)
    X_again, log_again = enc.transform(df.copy())
    assert np.array_equal(X, X_again) and np.array_equal(log_jac, log_again)
    one_row, one_log = enc.transform(df.iloc[[7]])
    np.testing.assert_allclose(one_row[0], X[7], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(one_log[0], log_jac[7], rtol=1e-13)

    save_encoder(enc, tmp_path / "enc.skops")
    loaded = load_encoder(tmp_path / "enc.skops")
    assert loaded.get_params() == enc.get_params()
    assert loaded.schema_ == enc.schema_
    assert list(loaded.feature_names_out_) == list(enc.feature_names_out_)
    assert np.array_equal(loaded.dequantization_width_, enc.dequantization_width_)
    for offset in (0.0, 0.5):
        X1, l1 = enc.transform(df, offset=offset)
        X2, l2 = loaded.transform(df, offset=offset)
        assert np.array_equal(X1, X2) and np.array_equal(l1, l2)


def test_load_refuses_untrusted_types(tmp_path: Path) -> None:
    path = tmp_path / "evil.skops"
    sio.dump({"format": "flowad.TabularEncoder/1", "x": collections.Counter("ab")}, path)
    with pytest.raises(ValueError, match="untrusted"):
        load_encoder(path)


# --------------------------------------------------------------- unknowns and missing
def test_unseen_category_goes_to_the_unknown_slot() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    probe = df.iloc[[0, 0]].reset_index(drop=True)
    probe.loc[1, "color"] = "purple"
    X0, log_jac = enc.transform(probe, offset=0.0)
    assert np.all(np.isfinite(X0)) and np.all(np.isfinite(log_jac))
    names = list(enc.feature_names_out_)
    cells = (X0[1] - X0[0]) / np.where(enc.dequantization_width_ > 0, enc.dequantization_width_, 1)
    assert cells[names.index("color_<unknown>")] == pytest.approx(1.0)
    assert cells[names.index(f"color_{df.loc[0, 'color']}")] == pytest.approx(-1.0)
    assert enc.unknown_counts(probe) == {"color": 1}


def test_rare_categories_and_unknowns_share_the_infrequent_slot() -> None:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"c": rng.choice(list("abcdef"), 300, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05])})
    enc = TabularEncoder(max_categories=3).fit(df)
    assert list(enc.feature_names_out_) == ["c_a", "c_b", "c_infrequent_sklearn"]
    X0, _ = enc.transform(pd.DataFrame({"c": ["a", "f", "zzz"]}), offset=0.0)
    assert X0[1, 2] == X0[2, 2] > X0[0, 2]


def test_missing_values_are_imputed_and_flagged() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    names = list(enc.feature_names_out_)
    probe = df.iloc[[0, 0, 0]].reset_index(drop=True)
    probe.loc[0, ["income", "rooms"]] = [np.nan, np.nan]
    probe.loc[1, "income"] = df["income"].median()
    levels, counts = np.unique(df["rooms"].dropna(), return_counts=True)
    probe.loc[1, "rooms"] = levels[np.argmax(counts)]
    X0, log_jac = enc.transform(probe, offset=0.0)
    assert np.all(np.isfinite(X0)) and np.all(np.isfinite(log_jac))
    for name in ("income", "rooms"):
        assert X0[0, names.index(name)] == pytest.approx(X0[1, names.index(name)])
        flag = names.index(f"{name}_missing")
        assert (X0[0, flag] - X0[1, flag]) / enc.dequantization_width_[flag] == pytest.approx(1)


def test_missing_category_is_its_own_level() -> None:
    df = pd.DataFrame({"c": ["a", "b", None, "a"] * 25})
    enc = TabularEncoder().fit(df)
    assert "c_<missing>" in list(enc.feature_names_out_)
    X0, _ = enc.transform(pd.DataFrame({"c": [None, "a"]}), offset=0.0)
    assert X0[0, list(enc.feature_names_out_).index("c_<missing>")] > X0[1, 2]


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def fitted() -> tuple[TabularEncoder, pd.DataFrame]:
    rng = np.random.default_rng(4)
    df = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 50),
            "kids": rng.integers(0, 4, 50),
            "color": rng.choice(["red", "blue"], 50),
        }
    )
    return TabularEncoder().fit(df), df


def raises(
    enc: TabularEncoder, df: pd.DataFrame, column: str | None, row: int | None
) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        enc.transform(df)
    error = info.value
    assert (error.column, error.row) == (column, row)
    if column is not None:
        assert repr(column) in str(error)
    if row is not None:
        assert f"row {row}" in str(error)
    return error


def test_missing_and_unexpected_columns(fitted: tuple[TabularEncoder, pd.DataFrame]) -> None:
    enc, df = fitted
    error = raises(enc, df.drop(columns=["age", "kids"]), "age", None)
    assert "missing column" in str(error) and "'kids'" in str(error)
    error = raises(enc, df.assign(extra=1.0), "extra", None)
    assert "unexpected" in str(error)


def test_wrong_dtype(fitted: tuple[TabularEncoder, pd.DataFrame]) -> None:
    enc, df = fitted
    when = pd.Series(pd.date_range("2024-01-01", periods=len(df)))
    error = raises(enc, df.assign(age=when), "age", None)
    assert "datetime" in str(error)


def test_string_in_numeric_column(fitted: tuple[TabularEncoder, pd.DataFrame]) -> None:
    enc, df = fitted
    bad = df.astype({"age": object})
    bad.loc[3, "age"] = "abc"
    error = raises(enc, bad, "age", 3)
    assert str(error) == "column 'age', row 3: expected a number, got 'abc'"
    labelled = bad.set_axis([f"r{i}" for i in range(len(bad))])
    assert "index label 'r3'" in str(raises(enc, labelled, "age", 3))


def test_numeric_strings_are_accepted(fitted: tuple[TabularEncoder, pd.DataFrame]) -> None:
    enc, df = fitted
    as_text = df.assign(age=df["age"].map(repr), kids=df["kids"].astype(str))
    X, log_jac = enc.transform(as_text)
    X_ref, log_ref = enc.transform(df)
    assert np.array_equal(X, X_ref) and np.array_equal(log_jac, log_ref)


def test_nan_and_inf_where_not_allowed(fitted: tuple[TabularEncoder, pd.DataFrame]) -> None:
    enc, df = fitted
    for column, row, value in [("age", 5, np.nan), ("kids", 2, np.nan), ("color", 4, None)]:
        bad = df.astype({column: object}) if value is None else df.astype({column: float})
        bad.loc[row, column] = value
        assert "missing value" in str(raises(enc, bad, column, row))
    for row, value in [(1, np.inf), (6, -np.inf)]:
        bad = df.copy()
        bad.loc[row, "age"] = value
        assert "infinite" in str(raises(enc, bad, "age", row))


def test_empty_frames_and_bad_training_columns(
    fitted: tuple[TabularEncoder, pd.DataFrame],
) -> None:
    enc, df = fitted
    error = raises(enc, df.iloc[:0], None, None)
    assert "empty" in str(error)
    with pytest.raises(SchemaError, match="empty"):
        TabularEncoder().fit(df.iloc[:0])
    with pytest.raises(SchemaError, match="'void'") as info:
        TabularEncoder().fit(df.assign(void=np.nan))
    assert info.value.column == "void"
    bad = df.copy()
    bad.loc[9, "age"] = np.inf
    with pytest.raises(SchemaError, match="column 'age', row 9"):
        TabularEncoder().fit(bad)


def test_excluded_columns_may_be_present_or_absent() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id", "label")).fit(df.assign(label=0))
    X_with, _ = enc.transform(df.assign(label=1, id=-df["id"]))
    X_without, _ = enc.transform(df.drop(columns="id"))
    assert np.array_equal(X_with, X_without)


# ------------------------------------------------------------------------- real data
DATASETS = ["4_breastw", "20_letter", "5_campaign", "30_satellite", "32_shuttle", "6_cardio"]
ALL_DISCRETE = {"4_breastw", "20_letter", "30_satellite", "32_shuttle"}


@pytest.mark.parametrize("name", DATASETS)
def test_benchmark_data_raw_and_standardized(name: str) -> None:
    path = DATA / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}")
    data = np.load(path)
    X, y = data["X"].astype(float), data["y"]
    if name == "5_campaign":  # a subsample keeps the test fast
        keep = np.random.default_rng(0).choice(len(X), 5000, replace=False)
        X, y = X[keep], y[keep]
    columns = [f"f{j}" for j in range(X.shape[1])]
    kinds = {}
    for variant, values in (("raw", X), ("std", StandardScaler().fit_transform(X))):
        frame = pd.DataFrame(values, columns=columns)
        for scaling in ("standard", "quantile"):
            enc = TabularEncoder(scaling=scaling).fit(frame[y == 0])  # type: ignore[arg-type]
            encoded, log_jac = enc.transform(frame)  # anomalies included
            assert np.all(np.isfinite(encoded)), (variant, scaling)
            # Finite everywhere: an anomaly off its column's support (a few of `6_cardio`'s)
            # scores at the nearest level with a penalty; no inlier is off the support.
            off = enc.off_support(enc.schema_.check(frame)).any(axis=1)
            assert np.all(np.isfinite(log_jac)) and not off[y == 0].any(), (variant, scaling)
        kinds[variant] = [spec.kind for spec in enc.schema_.columns]
        n_codes = sum(kind != "continuous" for kind in kinds[variant])
        assert np.count_nonzero(enc.dequantization_width_) == n_codes
    # The grid rule finds the same discrete columns after standardisation.
    assert kinds["raw"] == kinds["std"]
    if name in ALL_DISCRETE:
        assert "continuous" not in kinds["std"]


# -------------------------------------------------------------------- the range of values
def json_records(df: pd.DataFrame, rows: int = 3) -> list[dict[str, object]]:
    """The first records of ``df`` as the service receives them (parsed JSON)."""
    return json.loads(df.iloc[:rows].to_json(orient="records"))


@pytest.mark.parametrize("scaling", ["standard", "robust", "quantile"])
def test_values_beyond_the_encoded_bound_are_schema_errors(scaling: str) -> None:
    df = train_frame()
    enc = TabularEncoder(scaling=scaling, exclude=("id",)).fit(df)
    names = list(df.columns)
    good = json_records(df)
    specs = enc.schema_.of_kind("continuous") + enc.schema_.of_kind("discrete", "binary")
    assert [s.name for s in specs] == ["age", "income", "rooms", "owner"]
    for j, spec in enumerate(specs[:3]):  # owner is bool: 0/1 only
        lo, hi = enc.raw_range_[j]
        assert lo < spec.min and spec.max < hi
        # the edges encode to |x| <= MAX_ENCODED and are accepted
        inward = 1e-9 * (hi - lo)
        edges = [{**good[0], spec.name: lo + inward}, {**good[0], spec.name: hi - inward}]
        X, _ = enc.transform(pd.DataFrame.from_records(edges, columns=names))
        assert np.abs(X[:, j]).max() == pytest.approx(MAX_ENCODED, rel=1e-6)
        for value in [1e300, -1e300, float(hi + abs(hi)), float(lo - abs(lo)), 1.7e308]:
            records = [good[0], {**good[1], spec.name: value}]
            frame = pd.DataFrame.from_records(records, columns=names)
            for check in (enc.transform, enc.validate):
                with pytest.raises(SchemaError) as info:
                    check(frame)
                assert (info.value.column, info.value.row) == (spec.name, 1)
                assert str(info.value).startswith(
                    f"column {spec.name!r}, row 1: {value!r} is out of range: the model scores "
                    f"values in [{lo:.6g}, {hi:.6g}] (at most 1e+06 scale units"
                ), str(info.value)


def test_the_first_bad_row_is_named_whatever_its_column() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    records = json_records(df, 4)
    records[3]["age"] = 1e200
    records[2]["rooms"] = "1e200"  # a numeric string: echoed as given
    with pytest.raises(SchemaError, match=r"^column 'rooms', row 2: '1e200' is out of range"):
        enc.transform(pd.DataFrame.from_records(records, columns=list(df.columns)))


def test_encoded_guard_catches_what_the_raw_range_misses() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    enc.raw_range_ = np.array([[-np.inf, np.inf]] * len(enc.raw_range_))  # a wrong raw range
    with pytest.raises(SchemaError, match=r"^column 'age', row 0: 1e\+300 is out of range"):
        enc.transform(df.assign(age=1e300))


# ------------------------------------------------------------- numpy path = sklearn path
def parity_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training frame with every column kind, missing values everywhere they may be, an
    atom-heavy continuous column and a categorical column with more levels than the
    encoder's ``max_categories``; and a probe frame with unseen levels, literal "<missing>" /
    "<unknown>" strings, missing values and values beyond the training range."""
    rng = np.random.default_rng(seed)
    train = mixed_frame(1500, seed=seed)
    train["spike"] = np.where(rng.random(1500) < 0.4, 2.0, rng.normal(0, 1, 1500))
    weights = np.arange(1, 31) ** 2.0
    cities = [f"city{i}" for i in range(30)]
    train["city"] = rng.choice(cities, 1500, p=weights / weights.sum())
    train.loc[rng.random(1500) < 0.05, "city"] = None
    train.loc[rng.random(1500) < 0.05, "count"] = np.nan
    probe = mixed_frame(300, seed=seed + 1)
    probe["spike"] = np.where(rng.random(300) < 0.4, 2.0, rng.normal(0, 3, 300))
    probe["city"] = rng.choice([*cities, "elsewhere", "<missing>", "<unknown>"], 300)
    probe.loc[rng.random(300) < 0.1, "city"] = None
    probe.loc[rng.random(300) < 0.1, "count"] = np.nan
    probe.loc[rng.random(300) < 0.1, "age"] = np.nan
    probe.loc[:3, "amount"] = [1e-3, 1e3, 0.0, 55.5]
    probe.loc[:2, "channel"] = ["kiosk", "web", "app"]
    return train, probe


@pytest.mark.parametrize("atom_share", [0.01, None])
@pytest.mark.parametrize("scaling", ["standard", "robust", "quantile"])
def test_numpy_transform_is_bit_identical_to_sklearn(scaling: str, atom_share: float | None,
                                                     tmp_path: Path) -> None:
    """``transform`` computes with numpy from the fitted attributes; the scikit-learn
    transformers (``_transform_sklearn``) are the reference it must equal bit for bit."""
    train, probe = parity_frames()
    enc = TabularEncoder(scaling=scaling, exclude=("id",), max_categories=8,  # type: ignore[arg-type]
                         atom_share=atom_share).fit(train)
    assert "city_infrequent_sklearn" in enc.feature_names_out_
    assert (scaling == "quantile" or atom_share is None) != any(len(a) for a in enc.atoms_)
    save_encoder(enc, tmp_path / "enc.skops")
    loaded = load_encoder(tmp_path / "enc.skops")
    frames = [probe, train, probe.iloc[[0]], probe.iloc[[5]], probe.iloc[[1]], probe.iloc[7:9]]
    for encoder in (enc, loaded):
        for frame in frames:
            for offset in (0.0, 0.5, 0.25):
                fast, fast_jacobian = encoder.transform(frame, offset)
                reference, reference_jacobian = encoder._transform_sklearn(frame, offset)
                np.testing.assert_array_equal(fast, reference)
                np.testing.assert_array_equal(fast_jacobian, reference_jacobian)
    # The probe does exercise the infrequent slot, the unknown slot and imputation.
    X, _ = enc.transform(probe)
    names = list(enc.feature_names_out_)
    assert len(np.unique(X[:, names.index("city_infrequent_sklearn")])) == 2
    assert len(np.unique(X[:, names.index("channel_<unknown>")])) == 2
    assert len(np.unique(X[:, names.index("count_missing")])) == 2


# ----------------------------------------------------------------------- the records path
def test_transform_records_builds_no_frame_for_a_few_plain_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to RECORD_PATH_ROWS plain records: no DataFrame, and bit for bit what the frame
    path gives (tests/tabular/test_schema.py and tests/model/test_scoring_guards.py cover
    hostile ones)."""
    df = train_frame()
    df.loc[::10, "color"] = None  # missing text: not an unseen category
    enc = TabularEncoder(exclude=("id",)).fit(df)
    records = json.loads(train_frame(RECORD_PATH_ROWS, seed=1).to_json(orient="records"))
    records[1] = {**records[1], "color": "purple", "income": None, "rooms": None, "owner": 1}
    records[2] = {**records[2], "color": None}
    for n in (1, 2, RECORD_PATH_ROWS):
        frame = enc.schema_.records_frame(records[:n])
        X, log_jac = enc.transform(frame)
        unknown = enc.unknown_counts(frame)
        with monkeypatch.context() as patched:
            patched.setattr(pd.DataFrame, "from_records", _no_frame)
            got_X, got_log_jac, got_unknown = enc.transform_records(records[:n])
        assert got_X.tobytes() == X.tobytes() and got_log_jac.tobytes() == log_jac.tobytes()
        assert got_unknown == unknown == {"color": int(n > 1)}


def test_transform_records_rejects_as_the_frame_path_does() -> None:
    df = train_frame()
    enc = TabularEncoder(exclude=("id",)).fit(df)
    good = json.loads(df.iloc[:3].to_json(orient="records"))
    lo, hi = enc.raw_range_[0]
    for value in (hi * 1.01, lo * 1.01 - 1, 1e300):  # checks the records path makes itself
        records = [good[0], {**good[1], "age": value}, good[2]]
        with pytest.raises(SchemaError) as frame_error:
            enc.transform(enc.schema_.records_frame(records))
        with pytest.raises(SchemaError) as records_error:
            enc.transform_records(records)
        assert str(records_error.value) == str(frame_error.value)
        assert (records_error.value.column, records_error.value.row) == ("age", 1)


def _no_frame(*args: object, **kwargs: object) -> pd.DataFrame:
    raise AssertionError("the records path built a DataFrame")


# ----------------------------------------------------------------- values off the grid
def grid_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """An integer count, a 0/1 flag, a step-0.5 grid, levels off any grid and a float."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "count": rng.poisson(3, n),
        "flag": rng.integers(0, 2, n),
        "halves": rng.integers(0, 8, n) * 0.5 + 10.0,
        "levels": rng.choice([0.0, 1.0, 2.7], n),  # 3 levels, not on a regular grid
        "constant": np.full(n, 7.0),  # one level: its unit cell is a convention, not a grid
        "x": rng.normal(size=n),
    })


def off_support_factor(enc: TabularEncoder, column: str, offset: float,
                       cell: tuple[float, float]) -> float:
    """The log-density factor of a value ``offset`` steps from its nearest support point,
    whose cell spans ``cell`` steps below and above it (inf: unbounded), from the rule's
    definition (pipelines.tabular.support): log(eps) minus the Laplace exponent (scale: half the
    cell's half-width on the offset's side, the other side's where unbounded) minus the log of
    the kernel's integral over the cell (numerical quadrature). eps: these columns' levels were
    each seen more than once, or lie on a grid: 1 / (2 (n + 1))."""
    from scipy.integrate import quad

    n = enc.schema_.n_rows - enc.schema_[column].n_missing_train
    eps = 1 / (2 * (n + 1))
    below, above = cell
    if np.isinf(below) and np.isinf(above):  # a lone level: a grid's scale
        scale_below = scale_above = 0.25
    else:
        scale_below = 0.5 * (below if np.isfinite(below) else above)
        scale_above = 0.5 * (above if np.isfinite(above) else below)
    z = (quad(lambda u: np.exp(u / scale_below), -below, 0)[0]
         + quad(lambda u: np.exp(-u / scale_above), 0, above)[0])
    scale = scale_below if offset < 0 else scale_above
    return float(np.log(eps) - abs(offset) / scale - np.log(z))


def test_a_value_off_the_support_scores_finite_and_worse_with_distance() -> None:
    """A grid needs three levels on it (count, halves): there a value between two grid points
    is off the support. Elsewhere (a 0/1 flag, levels on no grid, a constant) the support is
    the levels seen. Off the support a value is scored at its nearest support point with the
    factor eps * Laplace(offset) / Z instead of 1 - eps: finite, and worse farther away."""
    df = grid_frame()
    enc = TabularEncoder().fit(df)
    # count, flag, halves, levels, constant
    assert enc.on_grid_.tolist() == [True, False, True, False, False]
    assert enc.grid_columns == {"count": 1.0, "halves": 0.5}
    base = df.iloc[[0] * 10].reset_index(drop=True).astype({"count": float, "flag": float})
    count, halves = base.loc[0, "count"], base.loc[0, "halves"]
    # row, column, value, (nearest value, offset in steps, its cell below / above in steps)
    cases = [
        (1, "count", count + 0.5, (count, 0.5, (0.5, 0.5))),  # a tie goes to the lower point
        (2, "flag", 0.5, (0.0, 0.5, (np.inf, 0.5))),  # a tie goes to the lower level
        (3, "halves", halves + 0.2, (halves, 0.4, (0.5, 0.5))),
        (4, "count", 40.0, None),  # far beyond training, but on the grid
        (5, "count", count + 1e-9, None),  # float noise: on the grid
        (6, "levels", 1.7, (1.0, 0.7, (0.5, 0.85))),  # levels 0, 1, 2.7 (step 1)
        (7, "flag", 2.0, (1.0, 1.0, (0.5, np.inf))),  # a third value of a 0/1 column
        (8, "constant", 7.3, (7.0, 0.3, (np.inf, np.inf))),
        (9, "levels", -4.0, (0.0, -4.0, (np.inf, 0.5))),  # beyond the levels: 16 nats more
    ]
    for row, column, value, _ in cases:
        base.loc[row, column] = value
    x, log_jac = enc.transform(base)
    assert np.isfinite(log_jac).all() and np.isfinite(x).all()
    assert enc.off_support(enc.schema_.check(base)).any(axis=1).tolist() == [
        False, True, True, True, False, False, True, True, True, True]
    names = list(enc.schema_.names)
    on_support = np.log1p(-1 / (2 * (enc.schema_.n_rows + 1)))
    for row, column, _, off in cases:
        if off is None:
            continue
        nearest, offset, cell = off
        snapped = base.iloc[[row]].assign(**{column: nearest})
        x_snapped, log_jac_snapped = enc.transform(snapped)
        np.testing.assert_array_equal(x[row], x_snapped[0])  # scored at the nearest cell
        expected = log_jac_snapped[0] - on_support + off_support_factor(enc, column, offset, cell)
        assert log_jac[row] == pytest.approx(expected, abs=1e-9), (row, column)
        assert log_jac[row] < log_jac_snapped[0] - 1.0  # worse than its nearest level
        per_column = column_log_jacobians(enc, base.iloc[[row]])[0]
        assert per_column.sum() == pytest.approx(log_jac[row], abs=1e-9)
        assert per_column[names.index(column)] < per_column[names.index("x")] - 1.0
    assert log_jac[4] == log_jac[5] == log_jac[0]
    # farther from the grid, lower density: 0.1 .. 0.5 steps from a count
    between = base.iloc[[0] * 5].assign(count=count + np.linspace(0.1, 0.5, 5))
    assert np.all(np.diff(enc.transform(between)[1]) < 0)
    # the records path (no frame) agrees with the frame path
    records = base.to_dict(orient="records")
    assert np.array_equal(enc.transform_records(records)[1], log_jac)


def test_the_off_support_penalty_keeps_each_level_its_probability() -> None:
    """Over one support point's cell, the factors integrate to 1: (1 - eps) at the point plus
    eps * Laplace / Z off it, per step. So the extension adds no mass and loses none."""
    from scipy.integrate import quad

    df = grid_frame()
    enc = TabularEncoder().fit(df)
    specs = enc.schema_.of_kind("discrete", "binary")
    for j, spec in enumerate(specs):
        levels = np.unique(df[spec.name])
        for level in levels[:3]:
            if enc.on_grid_[j]:
                below = above = 0.5 * spec.step
            else:
                lower, higher = levels[levels < level], levels[levels > level]
                below = (level - lower.max()) / 2 if len(lower) else np.inf
                above = (higher.min() - level) / 2 if len(higher) else np.inf
            density = np.vectorize(lambda value, name=spec.name: np.exp(
                _factor_at(enc, df, name, value)))
            off_mass = (quad(density, level - below, level)[0]
                        + quad(density, level, level + above)[0]) / spec.step
            on_mass = np.exp(_factor_at(enc, df, spec.name, level))
            assert on_mass + off_mass == pytest.approx(1.0, abs=1e-7), (spec.name, level)


def _factor_at(enc: TabularEncoder, df: pd.DataFrame, column: str, value: float) -> float:
    """One value's log-density factor in its column (pipelines.tabular.support), via the encoder."""
    record = df.iloc[[0]].astype({column: float}).assign(**{column: value})
    codes = [spec.name for spec in enc.schema_.of_kind("discrete", "binary")]
    return float(enc.support_factors(enc.schema_.check(record))[0, codes.index(column)])


def test_encoders_saved_before_the_support_rule_keep_scoring_as_saved(tmp_path: Path) -> None:
    """Two older rules: zero density between the grid points of a column with two or more
    levels on a grid (on_grid_ saved, no support), and before that none (no on_grid_)."""
    df = grid_frame()
    enc = TabularEncoder().fit(df)
    save_encoder(enc, tmp_path / "enc.skops")
    loaded = load_encoder(tmp_path / "enc.skops")
    assert loaded.on_grid_.tolist() == enc.on_grid_.tolist()
    off = df.iloc[[0]].astype({"count": float}).assign(count=2.5)
    np.testing.assert_array_equal(loaded.transform(off)[1], enc.transform(off)[1])
    assert np.isfinite(loaded.transform(off)[1]).all()
    state = sio.load(tmp_path / "enc.skops", trusted=sio.get_untrusted_types(
        file=tmp_path / "enc.skops"))
    for key in ("support_levels_", "off_support_mass_"):
        del state[key]
    state["on_grid_"] = np.array([True, True, True, False, False])  # the rule of then
    sio.dump(state, tmp_path / "grid.skops")
    grid = load_encoder(tmp_path / "grid.skops")
    assert isinstance(grid.support_, LegacySupport)
    assert grid.transform(off)[1].tolist() == [-np.inf]
    assert grid.transform(df.iloc[[0]].astype({"flag": float}).assign(flag=0.5))[1].tolist() == [
        -np.inf]
    # no log(1 - eps) on the support: the scores of then, bit for bit
    constant = -np.log(enc.cont_scaler_.scale_).sum() - np.log(enc.code_scaler_.scale_).sum()
    np.testing.assert_array_equal(grid.transform(df)[1], np.full(len(df), constant))
    del state["on_grid_"]
    sio.dump(state, tmp_path / "old.skops")
    old = load_encoder(tmp_path / "old.skops")
    assert not old.on_grid_.any() and np.isfinite(old.transform(off)[1]).all()
    np.testing.assert_array_equal(old.transform(df)[1], grid.transform(df)[1])


@pytest.mark.parametrize(("scaling", "magnitude"), [
    ("standard", 1e-200), ("standard", 1e155), ("standard", 1e200),
    ("robust", 1e-16)])
def test_a_column_whose_spread_float64_cannot_scale_is_refused(scaling, magnitude):
    """Standard scaling squares the values: near 1e155 the variance overflows, near 1e-200 it
    underflows to 0; a spread below 2e-15 is taken for none (scaled by 1): the column would be
    a constant to the flow. Both scalers manage 1e-12 and 1e150."""
    def frame(scale: float) -> pd.DataFrame:
        return pd.DataFrame({"a": np.random.default_rng(0).normal(size=300) * scale,
                             "b": np.random.default_rng(1).normal(size=300)})

    with pytest.raises(SchemaError, match=r"column 'a': values of magnitude up to .* cannot be "
                                          r"scaled in 64-bit floats"):
        TabularEncoder(scaling=scaling).fit(frame(magnitude))
    for fine in (1e-12, 1e150):
        encoded, _ = TabularEncoder(scaling=scaling).fit(frame(fine)).transform(frame(fine))
        assert np.isfinite(encoded).all() and np.ptp(encoded[:, 0]) > 1


def test_category_spellings_encode_as_their_category() -> None:
    """NFD, a trailing space and a zero width space spell a training category: the encoding,
    the log-Jacobian and the unseen-category counts are those of the category itself, on the
    frame path and the records path."""
    df = train_frame().assign(color=lambda f: f["color"].map({"red": "rouge", "green": "vert",
                                                              "blue": "bleu ciel"}))
    df.loc[df.index[:40], "color"] = "café"
    enc = TabularEncoder(exclude=("id",)).fit(df)
    canonical = df.drop(columns="id").iloc[[0] * 4].reset_index(drop=True).astype(
        {"color": object})
    canonical["color"] = ["café", "café", "vert", "bleu ciel"]
    spelt = canonical.assign(color=["cafe\u0301", "café ", "vert\u200b", "\ufeffbleu ciel\u00a0"])
    x, log_jac = enc.transform(canonical)
    spelt_x, spelt_jac = enc.transform(spelt)
    np.testing.assert_array_equal(spelt_x, x)
    np.testing.assert_array_equal(spelt_jac, log_jac)
    assert enc.unknown_counts(spelt) == {"color": 0}
    records = json.loads(canonical.to_json(orient="records"))
    spelt_records = [{**record, "color": color} for record, color in zip(
        records, spelt["color"], strict=True)]
    x, log_jac, unknown = enc.transform_records(records)
    spelt_x, spelt_jac, spelt_unknown = enc.transform_records(spelt_records)
    np.testing.assert_array_equal(spelt_x, x)
    np.testing.assert_array_equal(spelt_jac, log_jac)
    assert unknown == spelt_unknown == {"color": 0}
    assert enc.unknown_counts(spelt.assign(color="Vert")) == {"color": 4}
