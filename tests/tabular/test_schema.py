"""Schema inference, serialisation and checks (pipelines.tabular.schema)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.errors import SchemaError, shown
from pipelines.tabular.schema import Schema, infer_schema


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


def test_bool_columns_read_as_text_take_true_false_1_0_in_any_case(
    typed: tuple[Schema, list[str], dict[str, object]],
) -> None:
    """A CSV reader keeps a bool column as text once one value is neither True nor False: the
    error then names that value and its row, and mixed spellings of true and false pass."""
    schema, names, good = typed
    text = ["True", "false", " TRUE ", "0", "1", "1.0", True]
    values = schema.check(json_frame([{**good, "flag": v} for v in text], names))
    np.testing.assert_array_equal(values["flag"], [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    records = [{**good, "flag": v} for v in ["False", "True", "maybe", "False"]]
    message = check_error(schema, json_frame(records, names), "flag", 2)
    assert message.endswith("expected true or false (or 1 or 0), got 'maybe'")


def test_a_numeric_column_with_a_stray_string_is_a_bad_value_not_a_text_column() -> None:
    amounts = [f"{x:.2f}" for x in np.random.default_rng(0).gamma(2.0, 10.0, 99)]
    frame = pd.DataFrame({"amount": [*amounts[:40], "abc", *amounts[40:]]}, dtype=object)
    with pytest.raises(SchemaError, match=r"column 'amount', row 40: expected a number: 99 of "
                                          r"100 values of this column are numbers, this one is "
                                          r"'abc' \(fix it; a column of categories"):
        infer_schema(frame)
    # Meant as text: codes that are all numbers, a category dtype, or mostly words.
    assert infer_schema(pd.DataFrame({"zip": ["02134", "10001"] * 50}))["zip"].kind == (
        "categorical")
    assert infer_schema(frame.astype("category"))["amount"].kind == "categorical"
    words = pd.DataFrame({"size": ["S", "M", "L", "XL", "1"] * 20})
    assert infer_schema(words)["size"].kind == "categorical"


@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
@pytest.mark.parametrize("column", ["color", "size"])
def test_infinity_in_a_categorical_column_is_rejected_not_a_category(
    typed: tuple[Schema, list[str], dict[str, object]], column: str, value: float
) -> None:
    schema, names, good = typed
    message = check_error(schema, json_frame([good, {**good, column: value}], names), column, 1)
    assert message.endswith(f"infinite value {value} is not allowed")


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


# ----------------------------------------------------------------------- complex numbers
@pytest.mark.parametrize("column", ["height", "code", "bin01", "flag", "color", "size"])
@pytest.mark.parametrize("value", [1 + 2j, np.complex64(0.5 - 1j), 3 + 0j])
def test_a_complex_number_is_a_schema_error_naming_the_column_and_row(
    typed: tuple[Schema, list[str], dict[str, object]], column: str, value: complex
) -> None:
    """numpy casts a complex number to float with only a warning, dropping its imaginary
    part; as text it became the category "(1+2j)". Every column rejects it, on the frame path
    and the records path alike (a record's complex value makes its column complex or object)."""
    schema, names, good = typed
    records = [good, {**good, column: value}]
    if value.imag:
        message = check_error(schema, json_frame(records, names), column, 1)
        assert f"complex number {shown(value)} is not supported" in message
    for check in (lambda: schema.check(json_frame(records, names)),
                  lambda: schema.check_records(records)):
        with pytest.raises(SchemaError, match=rf"column '{column}', row \d: complex number"):
            check()


def test_a_complex_training_column_is_refused_by_name() -> None:
    frame = pd.DataFrame({"x": np.arange(40.0), "z": np.arange(40) * (1 + 1j)})
    with pytest.raises(SchemaError, match=r"column 'z', row 1: complex number \(1\+1j\)"):
        infer_schema(frame)
    text = pd.DataFrame({"x": np.arange(40.0), "t": ["a", 2 + 1j] * 20})
    with pytest.raises(SchemaError, match=r"column 't', row 1: complex number \(2\+1j\)"):
        infer_schema(text)


def test_a_complex_array_names_its_column_and_row() -> None:
    from pipelines.model.detector import Detector
    from pipelines.model.frames import as_frame

    array = np.zeros((5, 3), dtype=complex)
    array[2, 1] = 1j
    with pytest.raises(SchemaError, match=r"column 'x1', row 2: complex number 1j .*Complex data "
                                          r"not supported") as info:
        as_frame(array)
    assert (info.value.column, info.value.row) == ("x1", 2)
    with pytest.raises(SchemaError, match=r"column 'b', row 2: complex number 1j"):
        as_frame(array, ["a", "b", "c"])
    with pytest.raises(SchemaError, match="column 'x1', row 2"):
        Detector().fit(array)


# ------------------------------------------------------------------------ category text
SPELLINGS = {  # how a client may send each training category
    "café": ["cafe\u0301", "café ", " café", "caf\u00e9\u200b", "\ufeffcafé", "café\u00a0"],
    "web": ["web\u200b", "web ", "\tweb\n", "w\u00adeb", "web\u2060"],
    "Ångström": ["A\u030angstro\u0308m", "\u212bngström"],  # NFD; the Angstrom sign
}


def test_category_text_is_folded_alike_at_training_and_scoring() -> None:
    """NFC, invisible characters removed, outer white space stripped: a macOS client's NFD,
    a trailing space or a pasted zero width space is the category it spells. Case, inner
    spaces and the zero width joiner (emoji, scripts) still tell categories apart."""
    levels = [*SPELLINGS, "Web", "we b", "👩\u200d💻"]
    # trained on other spellings of the same levels: they are one level each
    place = [*levels, *[s[0] for s in SPELLINGS.values()]] * 6
    train = pd.DataFrame({"x": np.arange(float(len(place))), "place": place})
    schema = infer_schema(train)
    assert schema.text_folding and schema["place"].categories == tuple(sorted(levels))
    names = ["x", "place"]
    records = [{"x": 1.0, "place": spelling}
               for spellings in SPELLINGS.values() for spelling in spellings]
    expected = [level for level, spellings in SPELLINGS.items() for _ in spellings]
    assert list(schema.check(json_frame(records, names))["place"]) == expected
    assert list(schema.check_records(records)["place"]) == expected
    for other in ("WEB", "w eb", "👩💻", "👩\u200c💻"):
        assert schema.check_records([{"x": 1.0, "place": other}])["place"][0] not in levels
    for records_ in ([{"x": 1.0, "place": s}] for spellings in SPELLINGS.values()
                     for s in spellings):
        assert_same_outcome(schema, records_)


def test_schemas_saved_before_folding_compare_text_as_given() -> None:
    """A model saved before folding existed may hold 'café ' and 'café' as two levels (and
    its reference records hold them as given): it keeps scoring as it did."""
    schema = infer_schema(pd.DataFrame({"x": np.arange(4.0), "c": ["café ", "café"] * 2}))
    saved = schema.to_dict()
    del saved["text_folding"]
    old = Schema.from_dict({**saved, "columns": [
        saved["columns"][0], {**saved["columns"][1], "categories": ["café", "café "]}]})
    assert not old.text_folding
    records = [{"x": 1.0, "c": "café "}, {"x": 1.0, "c": "cafe\u0301"}]
    assert list(old.check_records(records)["c"]) == ["café ", "cafe\u0301"]
    assert list(old.check(json_frame(records, ["x", "c"]))["c"]) == ["café ", "cafe\u0301"]
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))).text_folding


# ------------------------------------------ the records path: check_records == check(frame)
def outcome(call: Callable[[], dict[str, np.ndarray]]) -> tuple[object, ...]:
    """What a check gives: its values, or its exception's type, message, column, row, problem.
    Any exception counts: building the frame raises UnicodeEncodeError for a lone surrogate."""
    try:
        values = call()
    except Exception as error:  # both paths must raise alike, whatever it is
        return ("raised", type(error), str(error), getattr(error, "column", None),
                getattr(error, "row", None), getattr(error, "problem", None))
    return ("values", values)


def assert_same_outcome(schema: Schema, records: list[dict[str, object]]) -> tuple[object, ...]:
    """``check_records`` and ``check(records_frame)`` give the same values, bit for bit (NaN
    where NaN, the sign of zero), or raise alike. Returns the outcome."""
    expected = outcome(lambda: schema.check(schema.records_frame(records)))
    got = outcome(lambda: schema.check_records(records))
    if expected[0] == "raised" or got[0] == "raised":
        assert got == expected
        return got
    want, have = expected[1], got[1]
    assert list(have) == list(want)
    for name, x in want.items():
        y = have[name]
        assert y.dtype == x.dtype and y.shape == x.shape, name
        if x.dtype == np.float64:
            same = np.array_equal(x, y, equal_nan=True) and np.array_equal(np.signbit(x),
                                                                           np.signbit(y))
            assert same, (name, x, y)
        else:
            assert [type(v) for v in y] == [type(v) for v in x] and list(y) == list(x), name
    return got


HOSTILE_VALUES = [
    None, True, False, 0, 1, -1, 2, 3, 7, 5.0, 0.5, -0.0, 0.0, 1.5, 1e300, -1e300,
    float("nan"), float("inf"), -float("inf"), 2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64,
    10**400, "1.5", "7", " 3 ", "", "abc", "nan", "inf", "1e999", "true", "red", "S",
    "<unknown>", "<missing>", "é", "日本", "\ud800", "a\x00b", "x" * 5000, [], [1, 2], {},
    {"a": 1}, (1,), {1}, np.float64(1.5), np.int64(3), np.bool_(True), np.nan,
    1 + 2j, np.complex128(3), "cafe\u0301", " red ", "red\u200b", "\u00a0S", "\ufeff",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[shown(v)[:20] for v in HOSTILE_VALUES])
def test_check_records_equals_check_of_the_frame_on_hostile_values(
    gappy: tuple[Schema, list[str], dict[str, object]], value: object
) -> None:
    schema, names, good = gappy
    for name in names:  # alone, after a good record, and as every record's value
        for records in ([{**good, name: value}], [good, {**good, name: value}],
                        [{**good, name: value}, {**good, name: value}]):
            assert_same_outcome(schema, records)


def test_check_records_equals_check_of_the_frame_on_odd_records(
    gappy: tuple[Schema, list[str], dict[str, object]],
) -> None:
    schema, _, good = gappy
    without = {k: v for k, v in good.items() if k != "income"}  # income may be missing
    cases = [
        [], [good], [good] * 3, [{**good, "id": 7}], [{**good, "surprise": {"x": 1}}],
        [without], [good, without], [{k: v for k, v in good.items() if k != "height"}],
        [{}], [{**good, "income": None}] * 2, [pd.Series(good)], [good, [1, 2]],
        [{**good, "flag": 1}, {**good, "flag": True}], [{**good, "flag": None}],
        [{**good, "bin01": True}, {**good, "bin01": 0}, {**good, "bin01": None}],
        [{**good, "bin37": 7}, {**good, "bin37": 3.0}],
        [{**good, "code": 2}, {**good, "code": 2.5}],
        [{**good, "color": None}], [{**good, "size": None}], [{**good, "color": 3}],
        [{**good, "city": 3}, {**good, "city": None}], [{**good, "city": 3}] * 2,
        [{**good, "city": 3.0}, {**good, "city": "3"}], [{**good, "city": None}] * 2,
    ]
    for records in cases:
        assert_same_outcome(schema, records)


def test_plain_records_are_checked_without_a_frame(
    gappy: tuple[Schema, list[str], dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Booleans, ints, floats, None where allowed, text: no frame is built for them."""
    schema, _, good = gappy
    records = [good, {**good, "flag": False, "bin01": True, "code": 3, "height": 180,
                      "income": None, "color": "<unknown>", "size": "é", "city": None},
               {**good, "height": -0.0, "bin37": 7, "pixel_std": 2**53, "id": "ignored"}]
    expected = schema.check(schema.records_frame(records))

    def no_frame(*args: object, **kwargs: object) -> pd.DataFrame:
        raise AssertionError("the records path built a frame")

    monkeypatch.setattr(Schema, "records_frame", no_frame)
    monkeypatch.setattr(pd.DataFrame, "from_records", no_frame)
    values = schema.check_records(records)
    for name, x in expected.items():
        np.testing.assert_array_equal(values[name], x)


@st.composite
def hostile_records(draw: st.DrawFn, good: list[dict[str, object]],
                    names: list[str]) -> list[dict[str, object]]:
    """1-4 training records as parsed JSON, some of their values replaced by hostile ones,
    some keys dropped or added."""
    value = st.one_of(
        st.sampled_from(HOSTILE_VALUES), st.none(), st.booleans(),
        st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4),
        st.text(st.characters(categories=["Cs", "Nd", "Ll"]), max_size=3),
        st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{0,3})?([eE]-?[0-9]{1,3})?", fullmatch=True),
        st.lists(st.integers(), max_size=2),
    )
    records = []
    for _ in range(draw(st.integers(1, 4))):
        record = dict(draw(st.sampled_from(good)))
        for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            record[name] = draw(value)
        for name in draw(st.lists(st.sampled_from([*names, "id", "surprise"]), max_size=1)):
            if draw(st.booleans()):
                record.pop(name, None)
            else:
                record[name] = draw(value)
        records.append(record)
    return records


def gappy_frame() -> pd.DataFrame:
    """``mixed_frame`` and a categorical column with missing values (text that may be None)."""
    frame = mixed_frame(400)
    city = np.random.default_rng(5).choice(["paris", "rome", "3", "oslo"], len(frame))
    return frame.assign(city=np.where(np.arange(len(frame)) % 7 == 0, None, city))


@pytest.fixture(scope="module")
def gappy() -> tuple[Schema, list[str], dict[str, object]]:
    """As ``typed``, with ``gappy_frame``'s schema."""
    frame = gappy_frame()
    schema = infer_schema(frame, exclude=("id",))
    assert schema["city"].kind == "categorical" and schema["city"].n_missing_train > 0
    good = json.loads(frame.drop(columns="id").iloc[:1].to_json(orient="records"))[0]
    return schema, schema.names, good


@pytest.fixture(scope="module")
def good_records() -> list[dict[str, object]]:
    return json.loads(gappy_frame().iloc[:40].to_json(orient="records"))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_check_records_equals_check_of_the_frame_on_generated_records(
    gappy: tuple[Schema, list[str], dict[str, object]],
    good_records: list[dict[str, object]], data: st.DataObject,
) -> None:
    schema, names, _ = gappy
    assert_same_outcome(schema, data.draw(hostile_records(good_records, names)))
