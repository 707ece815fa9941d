"""Reading tables safely: limits checked before decoding, missing values that are only missing,
pandas' index columns kept, nested columns named, appended files read as a snapshot, and outputs
that are written where they should be (``pipelines.io.tables``, ``csvfiles``, ``limits``,
``formulas``)."""

import io
import os
import stat
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import SchemaError, TableTooLargeError, UnreadableTableError
from pipelines.io.csvfiles import UnfinishedLineWarning
from pipelines.io.formulas import escape_formulas
from pipelines.io.limits import ReadLimits
from pipelines.io.tables import iter_chunks, iter_table, read_table
from pipelines.io.writer import TableWriter
from pipelines.tabular.columns import ColumnSpec
from pipelines.tabular.schema import Schema


def parquet_bytes(table: pa.Table | pd.DataFrame, **options) -> bytes:
    buffer = io.BytesIO()
    if isinstance(table, pd.DataFrame):
        table.to_parquet(buffer, **options)
    else:
        pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def bomb(rows: int = 40, chars: int = 20_000_000) -> bytes:
    """The issue's file: 40 rows of 20-million-character strings, zstd, ~28 KB."""
    return parquet_bytes(pa.table({"amount": np.ones(rows), "note": ["x" * chars] * rows}),
                         compression="zstd")


# ------------------------------------------------------------------ limits
def test_a_parquet_bomb_is_refused_before_its_text_is_expanded():
    data = bomb()
    assert len(data) < 40_000
    started = time.monotonic()
    with pytest.raises(TableTooLargeError, match=r"column 'note' holds 763 MiB of text in rows "
                       r"from 0, more than the limit of 256 MiB a chunk \(FLOWAD_MAX_CHUNK_BYTES"):
        list(iter_table(io.BytesIO(data), fmt="parquet"))
    assert time.monotonic() - started < 5  # measured, not decoded (~0.1 s; decoded: ~4 s, 3 GB)


def test_a_parquet_file_is_refused_from_its_footer():
    rng = np.random.default_rng(0)
    plain = parquet_bytes(pa.table({"x": rng.normal(size=100_000)}))  # 800 KB of doubles
    limits = ReadLimits(max_chunk_bytes=500_000)
    with pytest.raises(TableTooLargeError, match="a row group decodes to 1 MiB, more than the "
                       r"limit of 0 MiB \(FLOWAD_MAX_CHUNK_BYTES\): write it with smaller row"):
        next(iter_table(io.BytesIO(plain), fmt="parquet", limits=limits))
    total = ReadLimits(max_total_bytes=500_000)
    with pytest.raises(TableTooLargeError, match=r"FLOWAD_MAX_FILE_BYTES"):
        next(iter_table(io.BytesIO(plain), fmt="parquet", limits=total))
    wide = parquet_bytes(pa.table({f"c{i}": [1.0] for i in range(30)}))
    with pytest.raises(TableTooLargeError, match=r"30 columns, more than the limit of 20 "
                       r"\(FLOWAD_MAX_COLUMNS\)"):
        next(iter_table(io.BytesIO(wide), fmt="parquet", limits=ReadLimits(max_columns=20)))


def test_a_long_text_cell_is_named_by_column_and_row(tmp_path):
    frame = pd.DataFrame({"amount": [1.0, 2.0, 3.0], "note": ["a", "b" * 101, "c"]})
    limits = ReadLimits(max_cell_chars=100)
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    message = (r"column 'note', row 1: a text cell of 101 characters, more than the limit of "
               r"100 \(FLOWAD_MAX_CELL_CHARS\)")
    with pytest.raises(TableTooLargeError, match=f"^{path}: {message}"):
        list(iter_table(path, limits=limits))
    with pytest.raises(TableTooLargeError, match=message):
        list(iter_table(io.BytesIO(parquet_bytes(frame)), fmt="parquet", limits=limits))
    assert len(read_table(path, limits=ReadLimits(max_cell_chars=101))) == 3


def test_a_wide_csv_header_is_refused_before_any_row_is_parsed():
    # the file: 300,000 header columns, 2.9 MB (took 16 s and 650 MiB before its 400)
    header = ",".join(f"c{i}" for i in range(300_000)).encode()
    data = header + b"\n" + b",".join([b"1"] * 300_000) + b"\n"
    started = time.monotonic()
    with pytest.raises(TableTooLargeError, match=r"the header is longer than 1048576 bytes "
                       r"\(FLOWAD_MAX_HEADER_BYTES\), 1\d{5}\+ columns"):
        next(iter_table(io.BytesIO(data), fmt="csv"))
    with pytest.raises(TableTooLargeError, match=r"300000 columns, more than the limit of 10000"):
        next(iter_table(io.BytesIO(data), fmt="csv", limits=ReadLimits(max_header_bytes=10**7)))
    assert time.monotonic() - started < 3


def test_a_wide_table_is_read_in_fewer_rows_at_a_time(tmp_path):
    frame = pd.DataFrame(np.ones((1000, 40)), columns=[f"c{i}" for i in range(40)])
    limits = ReadLimits(max_chunk_cells=4000)  # 100 rows of 40 columns
    for source, fmt in [(frame.to_csv(index=False).encode(), "csv"),
                        (parquet_bytes(frame), "parquet")]:
        sizes = [len(chunk) for chunk in iter_table(io.BytesIO(source), 500, fmt=fmt,
                                                    limits=limits)]
        assert sizes == [100] * 10


def test_a_csv_chunk_parses_a_bounded_number_of_bytes():
    rows = b"".join(b"%d,%s\n" % (i, b"y" * 1000) for i in range(2000))  # ~2 MB
    limits = ReadLimits(max_chunk_bytes=200_000)
    with pytest.raises(TableTooLargeError, match=r"one chunk of rows reads more than 0 MiB of "
                       r"the file \(FLOWAD_MAX_CHUNK_BYTES\)"):
        next(iter_table(io.BytesIO(b"id,text\n" + rows), 1000, fmt="csv", limits=limits))
    chunks = list(iter_table(io.BytesIO(b"id,text\n" + rows), 100, fmt="csv", limits=limits))
    assert sum(len(chunk) for chunk in chunks) == 2000


def test_limits_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLOWAD_MAX_CELL_CHARS", "7")
    monkeypatch.setenv("FLOWAD_MAX_COLUMNS", "3")
    limits = ReadLimits.from_env()
    assert (limits.max_cell_chars, limits.max_columns) == (7, 3)
    assert limits.max_header_bytes == ReadLimits().max_header_bytes


# ------------------------------------------------------------------ header against a schema
def schema() -> Schema:
    return Schema((ColumnSpec("amount", "continuous", "float64", 0, 0.0, 0.0, 9.0),
                   ColumnSpec("country", "categorical", "object", 0, 0.0,
                              categories=("DE", "NA", "US"))), exclude=("id",))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_header_is_checked_against_the_schema_before_any_row(fmt):
    frame = pd.DataFrame({"amount": [1.0], "country": ["DE"], "label": [0]})
    data = frame.to_csv(index=False).encode() if fmt == "csv" else parquet_bytes(frame)
    with pytest.raises(SchemaError, match=r"^unexpected column\(s\) not in the schema: 'label'"):
        next(iter_table(io.BytesIO(data), fmt=fmt, schema=schema()))
    (chunk,) = iter_table(io.BytesIO(data), fmt=fmt, schema=schema(), strict=False)
    assert list(chunk.columns) == ["amount", "country", "label"]
    data = (frame.drop(columns=["amount"]).to_csv(index=False).encode() if fmt == "csv"
            else parquet_bytes(frame.drop(columns=["amount"])))
    with pytest.raises(SchemaError, match=r"^missing column\(s\): 'amount'"):
        next(iter_table(io.BytesIO(data), fmt=fmt, schema=schema(), strict=False))


# ------------------------------------------------------------------ missing values
NAMIBIA = (b"id,amount,country,note\n"
           b"1,1.5,NA,N/A\n"
           b"2,NA,US,null\n"
           b"3,,,None\n"
           b"4,2.5,nan,\n")


def test_in_text_columns_only_an_empty_cell_is_missing():
    (frame,) = iter_table(io.BytesIO(NAMIBIA), fmt="csv", schema=schema(), strict=False)
    assert frame["country"].tolist()[:2] == ["NA", "US"] and frame["country"].iloc[3] == "nan"
    assert frame["country"].isna().tolist() == [False, False, True, False]
    assert frame["note"].tolist()[:3] == ["N/A", "null", "None"] and pd.isna(frame["note"][3])
    # a numeric column: pandas' missing-value words are missing, as before
    np.testing.assert_array_equal(frame["amount"], [1.5, np.nan, np.nan, 2.5])
    assert frame["id"].tolist() == ["1", "2", "3", "4"]  # not the model's: read as it is


def test_without_a_model_a_column_of_numbers_and_missing_words_is_numeric():
    (frame,) = iter_table(io.BytesIO(NAMIBIA + b"5,NULL,DE,x\n"), fmt="csv")
    np.testing.assert_array_equal(frame["amount"], [1.5, np.nan, np.nan, 2.5, np.nan])
    assert frame["country"].tolist()[:2] == ["NA", "US"]
    assert frame["note"].tolist()[:3] == ["N/A", "null", "None"]
    (flags,) = iter_table(io.BytesIO(b"flag,x\nTrue,1\nNA,2\nFalse,3\n"), fmt="csv")
    assert flags["flag"].tolist()[::2] == [True, False] and pd.isna(flags["flag"][1])


# ------------------------------------------------------------------ Parquet: index, nesting
def test_pandas_index_columns_are_read_as_columns():
    frame = pd.DataFrame({"amount": [1.5, 2.5, 3.5], "country": ["DE", "NA", "US"],
                          "id": [0, 1, 2]})
    expected = frame[["country", "id", "amount"]]
    for written in (frame.set_index("amount"), frame.set_index(["amount", "id"])):
        (read,) = iter_table(io.BytesIO(parquet_bytes(written)), fmt="parquet")
        pd.testing.assert_frame_equal(read[sorted(read.columns)],
                                      expected[sorted(expected.columns)], check_dtype=False)
    # an index pandas keeps as a range (no column stored) is rebuilt, chunk by chunk
    chunks = list(iter_table(io.BytesIO(parquet_bytes(frame.set_index("id"))), 2,
                             fmt="parquet"))
    assert pd.concat(chunks)["id"].tolist() == [0, 1, 2]
    # the unnamed index of a filtered frame is no column
    (read,) = iter_table(io.BytesIO(parquet_bytes(frame[frame["amount"] > 2])), fmt="parquet")
    assert list(read.columns) == ["amount", "country", "id"] and len(read) == 2


@pytest.mark.parametrize("kind", ["list", "large_list", "struct", "map"])
@pytest.mark.parametrize("pandas_metadata", [True, False])
def test_a_nested_column_is_named(kind, pandas_metadata, tmp_path):
    values = {
        "list": pa.array([[1, 2], [3]]),
        "struct": pa.array([{"k": 1}, {"k": 2}]),
        "map": pa.array([[("a", 1)], [("b", 2)]], type=pa.map_(pa.string(), pa.int64())),
        "large_list": pa.array([["a"], ["b", "c"]], type=pa.large_list(pa.string())),
    }[kind]
    table = pa.table({"amount": [1.0, 2.0], "tags": values})
    if pandas_metadata:  # what df.to_parquet writes, and what made pyarrow raise
        table = pa.Table.from_pandas(table.to_pandas(), schema=table.schema)
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    with pytest.raises(UnreadableTableError, match=rf"^{path}: column 'tags' holds \S*(list|"
                       r"struct|map)<.*> values, not one number or text per row: flatten it"):
        next(iter_table(path))


# ------------------------------------------------------------------ a file being appended to
def test_a_csv_being_appended_to_is_read_as_it_was_when_opened(tmp_path):
    path = tmp_path / "growing.csv"
    path.write_bytes(b"a,b\n0,1.5\n1,9.8\n2,9.")  # its writer is in the middle of a line
    chunks = iter_chunks(path, 1000)
    first = next(chunks).frame  # the reader has reached the end of what is there
    with open(path, "ab") as writer:  # it finishes that line, and writes more
        writer.write(b"8\n3,7.0\n")
    with pytest.warns(UnfinishedLineWarning, match=f"^{path} is being written: its last line, "
                      "unfinished when it was opened, was not read"):
        rest = [chunk.frame for chunk in chunks]
    read = pd.concat([first, *rest])
    assert read["b"].tolist() == [1.5, 9.8]  # never 9.0 from the half-written line
    assert pd.read_csv(path)["b"].tolist() == [1.5, 9.8, 9.8, 7.0]


def test_a_last_line_without_a_newline_is_read_when_it_is_complete(tmp_path):
    path = tmp_path / "done.csv"
    path.write_bytes(b"a,b,c\n1,9.8,DE\n2,7.5,NA")
    read = read_table(path)  # its text column read as the rows before it had it: Namibia
    assert read["b"].tolist() == [9.8, 7.5] and read["c"].tolist() == ["DE", "NA"]
    chunks = iter_chunks(path, 1)
    first = next(chunks).frame
    with open(path, "ab") as writer:  # a newline and more lines: the last line was complete
        writer.write(b"\n3,1.0,x\n")
    assert pd.concat([first, *(c.frame for c in chunks)])["b"].tolist() == [9.8, 7.5]
    path.write_bytes(b"a,b")  # a header alone, unterminated
    assert read_table(path).columns.tolist() == ["a", "b"]


def test_a_last_record_quoted_over_several_lines_is_read_whole(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_bytes(b'a,b\n1,"x"\n2,"abc\ndef"')  # its last newline is inside the quotes
    assert [chunk["b"].tolist() for chunk in iter_table(path, 1)] == [["x"], ["abc\ndef"]]
    chunks = iter_chunks(path, 1)
    next(chunks)
    with open(path, "ab") as writer:  # it was still being written
        writer.write(b'ghi"\n')
    with pytest.raises(UnreadableTableError, match="its last record, quoted over several lines, "
                       "was being written when the file was opened"):
        list(chunks)


# ------------------------------------------------------------------ outputs
def test_an_output_through_a_symlink_is_written_where_it_points(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "2024-06-01.csv"
    target.write_text("yesterday")
    link = tmp_path / "current.csv"
    link.symlink_to(target.relative_to(tmp_path))
    with TableWriter(link) as writer:
        writer.write(pd.DataFrame({"a": [1, 2]}))
    assert link.is_symlink() and os.readlink(link) == "runs/2024-06-01.csv"
    assert pd.read_csv(target)["a"].tolist() == [1, 2]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["2024-06-01.csv"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "link-to-fifo"])
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    out = tmp_path / "out.csv"
    if kind == "directory":
        out.mkdir()
    else:
        fifo = tmp_path / ("pipe" if kind == "link-to-fifo" else "out.csv")
        os.mkfifo(fifo)
        if kind == "link-to-fifo":
            out.symlink_to(fifo)
    what = "a directory" if kind == "directory" else "a FIFO"
    with pytest.raises(ValueError, match=f"^{out} is {what}.*not a regular file"):
        TableWriter(out)
    if kind != "directory":
        assert stat.S_ISFIFO(os.stat(out).st_mode)  # still a FIFO, nothing written into it


def test_csv_output_neutralises_formulas_and_parquet_output_is_untouched(tmp_path):
    frame = pd.DataFrame({
        "note": pd.array(["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3",
                          "@SUM(A1)", "\tx", "-12.5", "fine", None], dtype="string"),
        "amount": [-1.5, 2.0, -3.0, 4.0, 5.0, 7.0, 8.0, 9.0],
    })
    with TableWriter(tmp_path / "out.csv") as writer:
        writer.write(frame)
    written = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert written["note"].tolist() == [
        "'=HYPERLINK(\"http://x\",\"y\")", "'+1+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)",
        "'\tx", "-12.5", "fine", ""]
    assert escape_formulas(pd.DataFrame({"t": ["\rx"]}))["t"].tolist() == ["'\rx"]
    np.testing.assert_array_equal(written["amount"], frame["amount"])
    with TableWriter(tmp_path / "raw.csv", escape_formulas=False) as writer:
        writer.write(frame)
    assert pd.read_csv(tmp_path / "raw.csv")["note"].iloc[0].startswith("=")
    with TableWriter(tmp_path / "out.parquet") as writer:
        writer.write(frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), frame,
                                  check_dtype=False)
