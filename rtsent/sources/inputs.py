"""Reviews to classify, read as a stream: argv texts, txt/stdin lines, or csv/tsv/jsonl/parquet rows.

Every input row comes out, in order, blank ones included (predict answers them with a reason instead of a
label), with any columns the user asked to carry into the output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from rtsent.errors import DataError, UsageError, first_line

TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json"}
"""File suffixes of tables and the reader each takes (the training data's too: sources/data.py). Any other
suffix is plain text, one review a line."""
DELIMITERS = {"csv": ",", "tsv": "\t"}
"""The field separator of each delimited-text format."""


def json_array_problem(path: Path) -> str | None:
    """Why a .json/.jsonl file cannot be read as JSON Lines: it holds one JSON array (what json.dump writes)."""
    with open(path, "rb") as fh:
        start = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"["):
        return (f"{path} holds a JSON array; rtsent reads JSON Lines, one object a line: write it with "
                f"pandas' to_json(orient='records', lines=True), or save it as .csv")
    return None


def table_format(path: str | Path) -> str | None:
    """The reader a file takes by its suffix, whatever its case (`reviews.CSV`); None for plain text."""
    return TABLE_FORMATS.get(Path(path).suffix.lower())


@dataclass(frozen=True)
class Row:
    """One input row: its text (None when the cell is empty or not text) and the columns carried along."""

    text: Any
    carried: dict[str, Any] = field(default_factory=dict)


def iter_rows(path: str, text_column: str, keep: Sequence[str], chunk: int) -> Iterator[list[Row]]:
    """Rows of a file in chunks: .txt/stdin ('-') a line each; csv/jsonl/parquet a record each.

    Raises UsageError for a missing file or columns kept from a plain-text input, DataError for
    unreadable content or a missing column.
    """
    if path == "-" or table_format(path) is None:
        if keep:  # (--text-column is let pass: one command line serves a folder of txt and csv files)
            raise UsageError(f"--keep-columns needs a csv, tsv, jsonl or parquet --file (plain text lines have no "
                             f"columns; {path} is read as one review a line)")
        if path == "-":
            yield from _chunks((Row(t) for t in _lines(sys.stdin.buffer, "<stdin>")), chunk)
            return
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--file {path}: no such file")
    kind = table_format(p)
    if kind is None:
        with open(p, "rb") as fh:
            yield from _chunks((Row(t) for t in _lines(fh, str(p))), chunk)
        return
    columns = [text_column, *[c for c in keep if c != text_column]]
    if kind == "parquet":
        yield from _iter_parquet(p, columns, keep, chunk)
    elif kind in DELIMITERS:
        yield from _iter_csv(p, columns, keep, chunk, DELIMITERS[kind])
    else:
        yield from _chunks(_jsonl_rows(p, text_column, keep), chunk)


def _lines(stream: Any, where: str) -> Iterator[str]:
    """Decoded lines without their line ends; a UTF-8 byte-order mark (Windows editors write one) is not text."""
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where} line {number} is not valid UTF-8; re-save the file as UTF-8") from None
        yield line.rstrip("\r\n")


def _chunks(items: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _missing(path: Path, names: Sequence[str], columns: Sequence[str]) -> None:
    """A column asked for that the file lacks, or has twice (which one would be read?), is a DataError."""
    absent = [c for c in columns if c not in names]
    if absent:
        role = "text column" if absent[0] == columns[0] else "column"
        fix = "pass --text-column" if role == "text column" else "check --keep-columns"
        raise DataError(f"{path} has no {role} {absent[0]!r} (columns: {', '.join(names)}); {fix}")
    twice = [c for c in columns if list(names).count(c) > 1]
    if twice:
        raise DataError(f"{path} has {list(names).count(twice[0])} columns named {twice[0]!r} (columns: "
                        f"{', '.join(names)}); rename them so that each name is used once")


def _batch_rows(batch: Any, columns: Sequence[str], keep: Sequence[str]) -> list[Row]:
    values = {c: batch.column(batch.schema.get_field_index(c)).to_pylist() for c in columns}
    return [Row(text, {c: values[c][i] for c in keep}) for i, text in enumerate(values[columns[0]])]


def _iter_parquet(path: Path, columns: Sequence[str], keep: Sequence[str], chunk: int) -> Iterator[list[Row]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for a file that is not parquet
        raise DataError(f"cannot read {path}: {first_line(exc)}") from None
    _missing(path, pf.schema_arrow.names, columns)
    for batch in pf.iter_batches(batch_size=chunk, columns=list(columns)):
        yield _batch_rows(batch, columns, keep)


def _iter_csv(path: Path, columns: Sequence[str], keep: Sequence[str], chunk: int,
              delimiter: str = ",") -> Iterator[list[Row]]:
    """CSV (or TSV) in record batches (pyarrow's streaming reader): memory holds one block, not the file.

    Only the columns asked for are read, each as the text it is: no type is guessed, so a kept `007`
    comes back `007`, and a column that looks numeric for a block and then holds `x1` reads whole.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    header = _csv_header(path, delimiter)
    if not header:
        raise DataError(f"cannot read {path}: the file is empty")
    _missing(path, header, columns)
    try:
        # Empty cells stay empty strings (a blank review), never a null that would hide a row's text.
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=list(columns),
                                      strings_can_be_null=False, quoted_strings_can_be_null=False)
        reader = pcsv.open_csv(path, convert_options=convert, parse_options=pcsv.ParseOptions(delimiter=delimiter))
        for batch in reader:
            rows = _batch_rows(batch, columns, keep)
            for start in range(0, len(rows), chunk):
                yield rows[start : start + chunk]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path}: {_csv_reason(exc)}") from None


def _csv_reason(exc: Exception) -> str:
    reason = first_line(exc)
    if "utf8" in reason.lower() or "utf-8" in reason.lower():
        reason = "it is not valid UTF-8 text; re-save it as UTF-8"
    return reason


def _csv_header(path: Path, delimiter: str = ",") -> list[str]:
    """The csv's column names as written (duplicates included), read by the csv module from the first record."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return next(csv.reader(fh, delimiter=delimiter), [])
    except UnicodeDecodeError:
        raise DataError(f"cannot read {path}: its header is not valid UTF-8 text; re-save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _jsonl_rows(path: Path, text_column: str, keep: Sequence[str]) -> Iterator[Row]:
    """One row per JSON line, read one line at a time; a blank line is a blank row."""
    used = {text_column, *keep}
    hook = lambda pairs: _no_repeated_keys(pairs, used)  # noqa: E731
    array = json_array_problem(path)
    if array:
        raise DataError(array)
    with open(path, "rb") as fh:
        for number, line in enumerate(_lines(fh, str(path)), start=1):
            if not line.strip():
                yield Row("", {c: None for c in keep})
                continue
            try:
                record = json.loads(line, object_pairs_hook=hook)
            except _RepeatedKey as exc:
                raise DataError(f"{path} record {number} has the field {exc.args[0]!r} twice; keep one") from None
            except ValueError as exc:
                raise DataError(f"{path} record {number} is not valid JSON ({exc})") from None
            if not isinstance(record, dict) or text_column not in record:
                raise DataError(f"{path} record {number} has no text field {text_column!r}; pass --text-column")
            yield Row(record[text_column], {c: record.get(c) for c in keep})


class _RepeatedKey(ValueError):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]], used: set[str]) -> dict[str, Any]:
    """json.loads keeps the last of repeated keys silently; a record that names a field read twice is refused."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record and key in used:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def check_file(path: str, text_column: str, keep: Sequence[str]) -> None:
    """Read a whole input file once and raise what iter_rows would raise part-way: a bad record, a
    missing field, invalid UTF-8. Called before the first output row is written (and before a model
    is loaded), so a bad file is refused whole and never leaves an output that stops half-way but looks
    complete. Stdin cannot be read twice, so it is not checked (its lines are streamed)."""
    if path == "-":
        return
    for _ in iter_rows(path, text_column, keep, 4096):
        pass


EMPTY = "empty text"


def problem(text: Any) -> str | None:
    """Why a text cannot be classified, or None when it can: the one decision predict, its arguments and
    serve all use. Empty or blank ("empty text"), not a string, or lone surrogates (undecodable argv bytes,
    JSON's \\ud800 escapes) that no UTF-8 encodes."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return EMPTY
    if not isinstance(text, str):
        return f"text is not a string ({type(text).__name__})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8 text (a lone surrogate)"
    return None
