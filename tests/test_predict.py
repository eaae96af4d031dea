"""The predict stage: labels and probabilities, one output row per input row, and any string at all
(property-based, with hypothesis). Reading the user's files: test_inputs.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from typer.testing import CliRunner

from rtsent import predict
from rtsent.cli import app
from rtsent.config import PredictConfig
from rtsent.errors import UsageError
from conftest import reference_probabilities
from helpers import SETTINGS, default_prompt, texts

runner = CliRunner()


def test_predict_labels_and_probabilities(trained, capsys):
    space, result = trained
    rows = list(predict.predictions(
        PredictConfig(texts=("a brilliant and wonderful film", "a dull and tedious plot")),
        predict.open_classifier(str(result.model_dir), precision="fp32"),
    ))
    assert [r["label"] for r in rows] == ["positive", "negative"]
    from conftest import reference_probabilities

    expected = reference_probabilities(result.model_dir, [default_prompt(r["text"]) for r in rows])
    for row, probs in zip(rows, expected):
        assert [row["probabilities"]["negative"], row["probabilities"]["positive"]] == pytest.approx(probs, abs=1e-4)
        assert row["probability"] == pytest.approx(probs.max(), abs=1e-4)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_predict_file_rows_stay_aligned_with_ids(trained, tmp_path, fmt):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 4):
    predict keeps one output row per input row, and carries columns."""
    import pyarrow as pa

    space, result = trained
    table = pa.table({"id": ["a", "b", "c"], "text": ["a brilliant film", "", "a dull plot"]})
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    out = runner.invoke(app, ["predict", "--file", str(path), "--model", str(result.model_dir), "--keep-columns", "id",
                              "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        ("a", "a brilliant film", "positive"), ("b", "", None), ("c", "a dull plot", "negative")]
    assert rows[1]["error"] == "empty text"


def test_predict_csv_output_has_a_row_for_a_blank_line(trained, tmp_path):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 4):
    predict keeps one output row per input row, and carries columns."""
    import csv
    import io

    space, result = trained
    path = tmp_path / "in.txt"
    path.write_text("a brilliant film\n\na dull plot\n")
    out = runner.invoke(app, ["predict", "--file", str(path), "--model", str(result.model_dir), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["text"], r["label"], r["error"]) for r in rows] == [
        ("a brilliant film", "positive", ""), ("", "", "empty text"), ("a dull plot", "negative", "")]


@pytest.fixture(scope="module")
def classifier(trained):
    from rtsent.engines import open_classifier

    return open_classifier(str(trained[1].model_dir), precision="fp32")


@SETTINGS
@given(text=texts)
def test_predict_on_any_string_gives_a_label_and_probabilities_or_a_clear_error(classifier, text):
    from rtsent import predict

    try:
        cfg = PredictConfig(texts=(text,))
    except UsageError as exc:
        assert not text.strip() and "text 1 is empty" in str(exc)
        return
    (row,) = list(predict.predictions(cfg, classifier))
    assert row["text"] == text
    # The batched scorer against the model's own full forward on the same (possibly truncated) prompt ids.
    (expected,) = reference_probabilities(classifier.name, classifier.encoder.encode([text]).input_ids)
    assert [row["probabilities"][n] for n in ("negative", "positive")] == pytest.approx(expected, abs=1e-4)
    assert row["label"] == ("negative", "positive")[int(expected.argmax())] or abs(expected[0] - expected[1]) < 1e-4
