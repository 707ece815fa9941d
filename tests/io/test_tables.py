"""Reading tables: a CSV that is not the table it claims to be fails with what is wrong and on
which line, never silently shifted or half-read."""

import io

import pandas as pd
import pytest

from pipelines.errors import InputError, UnreadableTableError
from pipelines.io.tables import iter_table

CASES = [
    # every row has one field more than the header: pandas alone would make the first column
    # the index and shift every value one column left
    (b"a,b,c\n1,2,3,x\n4,5,6,y\n", "line 2 has 4 fields, the header 3: check the delimiter"),
    (b"a,b,c\n1,2,3\n4,5,6,7\n8,9,10\n", "line 3 has 4 fields, the header 3: check the delim"),
    (b"a,b\n1,2\n3,\xe7\n", "not UTF-8 text (byte b'\\xe7' cannot be decoded): save the file"),
    (b"", "empty file: no header row"),
]


@pytest.mark.parametrize(("content", "message"), CASES, ids=["all-long", "one-long", "latin-1",
                                                             "empty"])
@pytest.mark.parametrize("chunk_rows", [1, 1000])
def test_an_unreadable_csv_says_what_and_where(tmp_path, content, message, chunk_rows):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UnreadableTableError) as caught:
        list(iter_table(path, chunk_rows))
    assert str(caught.value).startswith(f"{path}: {message}")
    with pytest.raises(UnreadableTableError) as caught:  # an upload: its reader names it
        list(iter_table(io.BytesIO(content), chunk_rows, fmt="csv"))
    assert str(caught.value).startswith(message)


def test_short_rows_are_missing_values_and_a_bom_is_no_column_name(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,c\n1,2\n4,5,6\n")
    (frame,) = iter_table(path)
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"a": [1, 4], "b": [2, 5],
                                                       "c": [float("nan"), 6.0]}))


def test_writing_into_a_missing_directory_names_it(tmp_path):
    from pipelines.io.writer import TableWriter

    with pytest.raises(InputError, match=r"out.parquet: no such directory '.*/nothere'"):
        TableWriter(tmp_path / "nothere" / "out.parquet")
