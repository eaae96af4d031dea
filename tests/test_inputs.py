"""Reading a user's files for predict (sources/inputs.py, predict.py): every row, every kept cell as written,
whatever the suffix's case or a byte-order mark, and a bad file refused before the first output row."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from rtsent.cli import app
from rtsent.errors import DataError
from rtsent.sources.inputs import iter_rows

runner = CliRunner()


def rows_of(path, keep=(), text_column="text"):
    return [row for chunk in iter_rows(str(path), text_column, list(keep), 64) for row in chunk]


def predict(model, path, *extra):
    return runner.invoke(app, ["predict", "--file", str(path), "--model", str(model), *extra])


def strict_json(text):
    """json.loads that refuses NaN/Infinity, as strict parsers (JavaScript's JSON.parse, jq) do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# 1. kept cells come back as written ------------------------------------------------------------------

def test_kept_csv_cells_are_not_retyped(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,zip,score,text\n007,02139,1e3,a fine film\n,00000,nan,a dull film\n")
    rows = rows_of(path, ["id", "zip", "score"])
    assert [r.carried for r in rows] == [{"id": "007", "zip": "02139", "score": "1e3"},
                                         {"id": "", "zip": "00000", "score": "nan"}]
    assert [r.text for r in rows] == ["a fine film", "a dull film"]


def test_kept_cells_reach_the_output_as_written(trained, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n007,a brilliant film\n0x1F,a dull plot\n")
    for fmt in ("jsonl", "csv"):
        out = predict(trained[1].model_dir, path, "--keep-columns", "id", "--format", fmt)
        assert out.exit_code == 0, out.output
        ids = ([json.loads(line)["id"] for line in out.stdout.splitlines()] if fmt == "jsonl"
               else [r["id"] for r in csv.DictReader(io.StringIO(out.stdout))])
        assert ids == ["007", "0x1F"], fmt


# 2. a large csv whose column looks numeric for a block is read whole ----------------------------------

def test_a_column_numeric_for_a_megabyte_then_text_is_read_whole(tmp_path):
    path = tmp_path / "big.csv"
    review = "a long review " * 14  # ~200 bytes a row: the first 1 MB block holds only numeric ids
    lines = [f"{i},{review}{i}" for i in range(6000)] + [f"x1,{review}last"]
    path.write_text("id,text\n" + "\n".join(lines) + "\n")
    assert path.stat().st_size > 1_100_000
    rows = rows_of(path, ["id"])
    assert len(rows) == 6001
    assert [r.carried["id"] for r in rows[:2]] + [rows[-1].carried["id"]] == ["0", "1", "x1"]
    assert rows[-1].text == review + "last"
    # A column not kept is not read, so its contents cannot stop the file either.
    assert len(rows_of(path)) == 6001


# 3. suffixes match whatever their case --------------------------------------------------------------

@pytest.mark.parametrize("name", ["reviews.CSV", "reviews.Csv"])
def test_an_upper_case_suffix_is_read_as_its_format(tmp_path, name):
    path = tmp_path / name
    path.write_text('text,id\n"two lines,\none review",a\nsecond,b\n')
    assert [(r.text, r.carried) for r in rows_of(path, ["id"])] == [
        ("two lines,\none review", {"id": "a"}), ("second", {"id": "b"})]


def test_upper_case_jsonl_and_parquet_suffixes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.JSONL").write_text('{"text": "one", "id": 1}\n{"text": "two", "id": 2}\n')
    pq.write_table(pa.table({"text": ["one", "two"], "id": [1, 2]}), tmp_path / "a.Parquet")
    for name in ("a.JSONL", "a.Parquet"):
        assert [(r.text, r.carried["id"]) for r in rows_of(tmp_path / name, ["id"])] == [("one", 1), ("two", 2)]


def test_a_tsv_file_is_a_table_of_tab_separated_columns(tmp_path):
    """Read as the same rows as its csv twin (a comma inside a cell is text), for predict and for training."""
    from rtsent.sources.data import FolderSource

    (tmp_path / "r.tsv").write_text("id\ttext\tlabel\n1\tgreat, truly\t1\n2\tawful\t0\n")
    (tmp_path / "r.csv").write_text('id,text,label\n1,"great, truly",1\n2,awful,0\n')
    tsv, csv_rows = rows_of(tmp_path / "r.tsv", ["id"]), rows_of(tmp_path / "r.csv", ["id"])
    assert [(r.text, r.carried) for r in tsv] == [(r.text, r.carried) for r in csv_rows] == [
        ("great, truly", {"id": "1"}), ("awful", {"id": "2"})]
    (tmp_path / "data").mkdir()
    (tmp_path / "r.tsv").rename(tmp_path / "data" / "train.tsv")
    table = FolderSource(tmp_path / "data").read("train").table
    assert table.column("text").to_pylist() == ["great, truly", "awful"] and table.column("label").to_pylist() == [1, 0]


def test_a_json_array_and_kept_columns_of_plain_text_are_refused_with_the_fix(tmp_path):
    from rtsent.errors import UsageError
    from rtsent.sources.data import read_table_file

    (tmp_path / "a.json").write_text(json.dumps([{"text": "great", "label": 1}]))
    with pytest.raises(DataError, match="holds a JSON array; rtsent reads JSON Lines"):
        rows_of(tmp_path / "a.json")
    with pytest.raises(DataError, match="holds a JSON array"):
        read_table_file(tmp_path / "a.json")
    (tmp_path / "a.txt").write_text("great\n")
    with pytest.raises(UsageError, match="--keep-columns needs a csv, tsv, jsonl or parquet --file"):
        rows_of(tmp_path / "a.txt", keep=["id"])


def test_training_data_files_match_their_suffix_whatever_its_case(tmp_path):
    from rtsent.sources.data import FolderSource

    (tmp_path / "TRAIN.CSV").write_text("text,label\na fine film,1\n")
    source = FolderSource(tmp_path)
    assert source.available == ["TRAIN"]
    assert source.read("TRAIN").table.column("text").to_pylist() == ["a fine film"]


# 4. a bad record half-way: refused before the first row is written -----------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_bad_jsonl_record_half_way_writes_nothing(trained, tmp_path, fmt):
    path = tmp_path / "in.jsonl"
    records = [{"text": f"a brilliant film {i}"} for i in range(300)]
    records[200] = {"review": "no text field"}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = predict(trained[1].model_dir, path, "--format", fmt)
    assert out.exit_code == 2, out.output
    assert out.stdout == ""
    assert "record 201 has no text field 'text'" in out.output


def test_a_bad_csv_row_half_way_writes_nothing(trained, tmp_path):
    path = tmp_path / "in.csv"
    review = "a long review " * 14  # past pyarrow's first 1 MB block, which a streaming read would have written
    path.write_text("text,id\n" + "".join(f"{review}{i},{i}\n" for i in range(6000)) + "one,too,many\n")
    out = predict(trained[1].model_dir, path, "--format", "jsonl")
    assert out.exit_code == 2 and out.stdout == "", out.output


# 5. non-finite numbers are written as strict JSON ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_nan_in_a_kept_column_is_null_in_json_output(trained, tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a brilliant film", "a dull plot"], "score": [float("nan"), float("inf")],
                             "n": [[1.0, float("nan")], [2.0]]}), path)
    out = predict(trained[1].model_dir, path, "--keep-columns", "score,n", "--format", fmt)
    assert out.exit_code == 0, out.output
    rows = ([strict_json(line) for line in out.stdout.splitlines()] if fmt == "jsonl" else strict_json(out.stdout))
    assert [(r["score"], r["n"]) for r in rows] == [(None, [1.0, None]), (None, [2.0])]


# 6. kept columns never overwrite output columns; a column named twice is refused ---------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_kept_column_named_like_an_output_column_is_carried_beside_it(trained, tmp_path, fmt):
    path = tmp_path / "in.csv"
    path.write_text("text,p_positive,label,error\na brilliant film,mine,gold,none\n")
    out = predict(trained[1].model_dir, path, "--keep-columns", "p_positive,label,error", "--format", fmt)
    assert out.exit_code == 0, out.output
    row = (json.loads(out.stdout) if fmt == "jsonl" else next(csv.DictReader(io.StringIO(out.stdout))))
    assert (row["input.p_positive"], row["input.label"], row["input.error"]) == ("mine", "gold", "none")
    assert row["label"] in ("positive", "negative")
    if fmt == "csv":
        assert 0.0 <= float(row["p_positive"]) <= 1.0


@pytest.mark.parametrize("content, name", [
    ("text,label,text\nfirst,1,second\n", "in.csv"),
    ('{"text": "first", "text": "second"}\n', "in.jsonl"),
])
def test_a_text_column_named_twice_is_refused(trained, tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match="'text'"):
        rows_of(path)
    out = predict(trained[1].model_dir, path)
    assert out.exit_code == 2 and out.stdout == "" and "text" in out.output


def test_a_parquet_text_column_named_twice_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["first"]), pa.array(["second"])], names=["text", "text"]), path)
    with pytest.raises(DataError, match="2 columns named 'text'"):
        rows_of(path)


# 7. a UTF-8 byte-order mark is not text --------------------------------------------------------------

def test_a_byte_order_mark_is_not_part_of_the_first_review(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "in.txt").write_bytes(bom + b"first review\nsecond\n")
    (tmp_path / "in.jsonl").write_bytes(bom + b'{"text": "first review"}\n')
    (tmp_path / "in.csv").write_bytes(bom + b"text,id\nfirst review,1\n")
    for name in ("in.txt", "in.jsonl", "in.csv"):
        assert rows_of(tmp_path / name)[0].text == "first review", name


def test_a_byte_order_mark_on_stdin_is_not_text(trained):
    out = runner.invoke(app, ["predict", "-", "--model", str(trained[1].model_dir), "--format", "jsonl"],
                        input=b"\xef\xbb\xbfa brilliant film\n")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["text"] == "a brilliant film"
