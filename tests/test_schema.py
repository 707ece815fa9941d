"""Schema inference, serialisation and checks (pipelines.schema)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.schema import Schema, SchemaError, infer_schema, shown


def mixed_frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One column of each kind the inference has to tell apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, n).astype(float)
    income = rng.lognormal(10, 1, n)
    income[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "height": rng.normal(170, 10, n),
            "code": rng.integers(0, 7, n),
            "bin01": rng.integers(0, 2, n),
            "bin37": rng.choice([3.0, 7.0], n),
            "flag": rng.random(n) < 0.3,
            "color": rng.choice(["red", "green", "blue"], n),
            "size": pd.Categorical(rng.choice(["S", "M", "L"], n)),
            "income": income,
            "pixel_std": (pixels - pixels.mean()) / pixels.std(),
            "const": np.full(n, 5.0),
            "offgrid": rng.choice([0.0, 0.3, 1.1, 2.0], n),
        }
    )


def test_infers_kinds_steps_and_categories() -> None:
    df = mixed_frame()
    schema = infer_schema(df, exclude=("id", "not_there"))
    assert schema.names == [c for c in df.columns if c != "id"]
    kinds = {spec.name: spec.kind for spec in schema.columns}
    assert kinds == {
        "height": "continuous",
        "code": "discrete",
        "bin01": "binary",
        "bin37": "binary",
        "flag": "binary",
        "color": "categorical",
        "size": "categorical",
        "income": "continuous",
        "pixel_std": "discrete",
        "const": "discrete",
        "offgrid": "discrete",
    }
    assert schema["code"].step == 1.0 and schema["code"].n_unique == 7
    assert (schema["bin37"].min, schema["bin37"].step) == (3.0, 4.0)
    assert (schema["flag"].dtype, schema["flag"].min, schema["flag"].step) == ("bool", 0.0, 1.0)
    # An integer column standardised: step = 1 / std of the raw integers.
    pixels = df["pixel_std"].to_numpy()
    assert schema["pixel_std"].step == pytest.approx(np.diff(np.unique(pixels)).min(), rel=1e-9)
    assert schema["pixel_std"].step * 255 == pytest.approx(np.ptp(pixels), rel=1e-9)
    assert schema["const"].step == 1.0
    assert schema["offgrid"].step == pytest.approx(0.3)  # the smallest gap, not a grid
    assert schema["color"].categories == ("blue", "green", "red")
    assert schema["size"].categories == ("L", "M", "S")
    assert schema["height"].step is None and schema["height"].min == df["height"].min()
    n_missing = int(df["income"].isna().sum())
    assert n_missing > 0
    assert schema["income"].n_missing_train == n_missing
    assert schema["income"].missing_rate == pytest.approx(n_missing / len(df))
    assert schema["height"].n_missing_train == 0


def test_level_threshold_and_half_rows_rule() -> None:
    rng = np.random.default_rng(1)
    # 30 levels off any grid: continuous unless max_discrete_levels allows 30.
    levels = np.sort(rng.normal(size=30))
    df = pd.DataFrame({"x": rng.choice(levels, 600)})
    assert infer_schema(df)["x"].kind == "continuous"
    assert infer_schema(df, max_discrete_levels=30)["x"].kind == "discrete"
    # Integers with as many levels as rows: no point masses to handle, so continuous.
    assert infer_schema(pd.DataFrame({"x": rng.permutation(600)}))["x"].kind == "continuous"


def test_to_dict_is_json_safe_and_round_trips() -> None:
    schema = infer_schema(mixed_frame(200), exclude=("id",))
    data = json.loads(json.dumps(schema.to_dict()))
    assert Schema.from_dict(data) == schema
    with pytest.raises(ValueError, match="version"):
        Schema.from_dict({**data, "version": 99})


def test_schema_error_names_column_and_row() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3]}, index=["r0", "r1", "r2"])
    error = SchemaError.at(frame, "a", 2, "bad value")
    assert isinstance(error, ValueError)
    assert (error.column, error.row) == ("a", 2)
    assert str(error) == "column 'a', row 2 (index label 'r2'): bad value"
    plain = SchemaError.at(frame.reset_index(drop=True), "a", 1, "bad value")
    assert str(plain) == "column 'a', row 1: bad value"


def test_check_parses_numeric_strings_and_stringifies_categories() -> None:
    train = pd.DataFrame({"x": [1.5, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"]})
    schema = infer_schema(train)
    values = schema.check(pd.DataFrame({"x": ["1.5", "7"], "c": ["a", 3]}))
    np.testing.assert_array_equal(values["x"], [1.5, 7.0])
    assert list(values["c"]) == ["a", "3"]


def test_unsupported_dtype_at_fit_names_the_column() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0], "when": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    with pytest.raises(SchemaError, match="'when'") as info:
        infer_schema(df)
    assert info.value.column == "when"
    assert infer_schema(df, exclude=("when",)).names == ["x"]


# ----------------------------------------------------- hostile input, as the service parses it
def json_frame(records: list[dict[str, object]], names: list[str]) -> pd.DataFrame:
    """Records as the service builds them from parsed JSON."""
    return pd.DataFrame.from_records(records, columns=names)


def check_error(schema: Schema, frame: pd.DataFrame, column: str, row: int) -> str:
    """The message of the SchemaError that ``schema.check(frame)`` raises at ``column, row``."""
    with pytest.raises(SchemaError) as info:
        schema.check(frame)
    assert (info.value.column, info.value.row) == (column, row), str(info.value)
    message = str(info.value)
    assert message.startswith(f"column {column!r}, row {row}"), message
    return message


def test_shown_cuts_long_values() -> None:
    assert shown("abc") == "'abc'"
    assert shown(1.5) == "1.5"
    long = shown("x" * 1_000_000)
    assert long == "'" + "x" * 59 + "… (1000000 characters)"
    assert shown(list(range(1000))) == "[0, 1, 2, 3, 4, 5, ...]"
    nested = json.loads("[" * 500 + "]" * 500)  # a full repr would be 1000 characters
    assert shown(nested) == "[[[...]]]"
    assert len(shown({"a": "b" * 10_000, "c": list(range(10_000))})) <= 61
    huge = 10**5000 - 1  # beyond Python's int-to-str limit: repr raises
    assert shown(huge) == "<an integer of about 5000 digits>"


def test_errors_echo_at_most_a_cut_value() -> None:
    schema = infer_schema(pd.DataFrame({"x": [1.5, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"]}))
    names = ["x", "c"]
    message = check_error(schema, json_frame([{"x": "y" * 1_000_000, "c": "a"}], names), "x", 0)
    assert len(message) < 150 and message.endswith("… (1000000 characters)")
    frame = json_frame([{"x": 1.0, "c": "a"}], names).assign(**{"z" * 1_000_000: 1.0})
    with pytest.raises(SchemaError) as info:
        schema.check(frame)
    assert len(str(info.value)) < 150
    extra = [f"u{k}" for k in range(100)]
    many = json_frame([{"x": 1.0, "c": "a", **dict.fromkeys(extra, 1)}], names + extra)
    with pytest.raises(SchemaError, match=r"'u4' and 95 more$"):
        schema.check(many)
    labelled = json_frame([{"x": "bad", "c": "a"}], names).set_axis(["L" * 10_000])
    with pytest.raises(SchemaError) as info:
        schema.check(labelled)
    assert len(str(info.value)) < 200 and "(10000 characters)" in str(info.value)


@pytest.fixture(scope="module")
def typed() -> tuple[Schema, list[str], dict[str, object]]:
    """A schema with every kind, its column names and one good record as parsed JSON."""
    frame = mixed_frame(400)
    schema = infer_schema(frame, exclude=("id",))
    good = json.loads(frame.drop(columns="id").iloc[:1].to_json(orient="records"))[0]
    return schema, schema.names, good


@pytest.mark.parametrize("column", ["height", "code", "income", "pixel_std"])
@pytest.mark.parametrize("value", [True, False])
def test_booleans_in_numeric_columns_are_rejected(
    typed: tuple[Schema, list[str], dict[str, object]], column: str, value: bool
) -> None:
    schema, names, good = typed
    assert schema[column].kind in ("continuous", "discrete")
    # alone (bool dtype) and among numbers (object dtype)
    for records, row in (([{**good, column: value}], 0), ([good, {**good, column: value}], 1)):
        message = check_error(schema, json_frame(records, names), column, row)
        assert message.endswith(f"expected a number, got the boolean {value!r}")


def test_bool_columns_take_true_false_1_0_and_others_score_third_values(
    typed: tuple[Schema, list[str], dict[str, object]],
) -> None:
    schema, names, good = typed
    for value in [2, -1, 0.5, "1.5"]:
        message = check_error(schema, json_frame([good, {**good, "flag": value}], names), "flag", 1)
        assert message.endswith(f"expected true or false (or 1 or 0), got {value!r}"), message
    # Booleans only where the levels are 0 and 1.
    message = check_error(schema, json_frame([{**good, "bin37": True}], names), "bin37", 0)
    assert message.endswith("expected a number, got the boolean True")
    # Accepted: a bool column's true/false/1/0, a 0/1 column's booleans, numeric strings, and
    # a third value in a numeric binary column (scored as unlikely, as a discrete column's).
    accepted = [{**good, "flag": v, "bin01": b, "bin37": s}
                for v, b, s in [(True, 1, 3), (False, 0, "7"), (1, True, 5.0), (0.0, False, 3)]]
    values = schema.check(json_frame(accepted, names))
    np.testing.assert_array_equal(values["flag"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(values["bin01"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(values["bin37"], [3.0, 7.0, 5.0, 3.0])


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], [], {}])
@pytest.mark.parametrize("column", ["color", "size"])
def test_containers_in_categorical_columns_are_rejected(
    typed: tuple[Schema, list[str], dict[str, object]], column: str, value: object
) -> None:
    schema, names, good = typed
    message = check_error(schema, json_frame([good, {**good, column: value}], names), column, 1)
    assert message.endswith(f"expected text or a number, got a {type(value).__name__} {value!r}")
    # numbers are still categories (as text)
    assert schema.check(json_frame([{**good, column: 3}], names))[column][0] == "3"


def test_numbers_as_strings_and_missing_values_pass(
    typed: tuple[Schema, list[str], dict[str, object]],
) -> None:
    schema, names, good = typed
    as_text = {k: str(v) if isinstance(v, float | int) and not isinstance(v, bool) else v
               for k, v in good.items()}
    values = schema.check(json_frame([as_text, {**good, "income": None}], names))
    assert values["height"][0] == pytest.approx(good["height"])
    assert np.isnan(values["income"][1])


@pytest.mark.parametrize("column", ["height", "code", "bin01", "income"])
def test_integers_beyond_float64_are_out_of_range(
    typed: tuple[Schema, list[str], dict[str, object]], column: str
) -> None:
    schema, names, good = typed
    huge = json.loads("-" + "9" * 401)  # Python's json parses it to an exact int
    message = check_error(schema, json_frame([good, {**good, column: huge}], names), column, 1)
    assert "number out of range: -9999" in message and "(402 characters)" in message
    assert len(message) < 250
    # within float64 they are numbers (the encoder bounds them further)
    assert schema.check(json_frame([{**good, column: 10**300}], names))[column][0] == 1e300
    # and a category as text
    assert schema.check(json_frame([{**good, "color": huge}], names))["color"][0] == str(huge)
