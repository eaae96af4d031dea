"""What evaluate, the model card and `rtsent runs` report: a model folder's reports describe what the
folder does, mistakes point at the file's rows, the terminal is safe from the data, one damaged run
does not hide the others, and a log keeps every table cell whole; `rtsent report`/`runs` and the training-curve
plot."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rtsent.artifacts.prepared import find_prepared, load_prepared
from rtsent.cli import app
from helpers import assert_png, grid_nll, validation_scores

runner = CliRunner()


@pytest.fixture
def own(trained, tmp_path):
    """A private copy of the trained workspace (evaluate writes into the run's model folder)."""
    from rtsent.artifacts.workspace import Workspace

    space, _ = trained
    root = tmp_path / "ws"
    shutil.copytree(space.root, root)
    ws = Workspace.resolve(root)
    return ws, ws.run("tiny").model


def evaluate(ws, *args):
    out = runner.invoke(app, ["evaluate", "--workdir", str(ws.root), "--no-plots", "--precision", "fp32", *args])
    assert out.exit_code == 0, out.output
    return out


def card_accuracy(model: Path, split: str) -> float:
    text = (model / "README.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"| {split} | {split.title()} accuracy"))
    return float(line.split("|")[3])


def predicted_accuracy(model: Path, ws, split: str) -> float:
    """Accuracy of what predict does (the classifier's own probabilities) on the prepared split's prompts."""
    from rtsent.engines import open_classifier

    clf = open_classifier(str(model), precision="fp32", engine="torch")
    dd = load_prepared(find_prepared(ws, None), ws).dataset
    table = dd[split].data
    probs = clf.calibrate(clf.scores(table.column("input_ids").to_pylist()))
    return float((probs.argmax(1) == table.column("labels").to_numpy()).mean())


# 8. --calibrate never replaces the folder's report -----------------------------------------------------

def test_contextual_calibration_is_reported_beside_not_in_the_model_folder(own):
    ws, model = own
    evaluate(ws, "--model", str(model), "--split", "test")
    plain = json.loads((model / "eval-test.json").read_text())
    assert card_accuracy(model, "test") == pytest.approx(plain["accuracy"], abs=1e-4)
    assert plain["accuracy"] == pytest.approx(predicted_accuracy(model, ws, "test"))
    out = evaluate(ws, "--model", str(model), "--split", "test", "--calibrate")
    assert json.loads((model / "eval-test.json").read_text()) == plain  # untouched
    assert card_accuracy(model, "test") == pytest.approx(plain["accuracy"], abs=1e-4)
    [calibrated] = list(ws.evals_dir.glob("tiny-*/eval-test-contextual.json"))
    assert "contextual" in json.loads(calibrated.read_text())["calibration"]
    assert str(calibrated) in out.output.replace("\n", "")


def test_a_contextual_report_left_in_a_folder_by_an_older_rtsent_is_not_credited(own):
    from rtsent.artifacts import card
    from rtsent.report import list_runs

    ws, model = own
    (model / "eval-test.json").write_text(json.dumps({
        "split": "test", "accuracy": 0.123, "macro_f1": 0.1, "calibration": {"contextual": {"p_cf": [0.5, 0.5]}}}))
    card.write(model)
    assert "0.1230" not in (model / "README.md").read_text()
    assert list_runs(ws, "json")[0]["test_accuracy"] is None


# 9. a score on other data is never credited to the training data ---------------------------------------

def test_evaluating_on_another_prepared_dataset_keeps_the_runs_own_report(own, data_dir, tiny_model_dir):
    from rtsent import prepare
    from rtsent.config import PrepareConfig

    ws, model = own
    evaluate(ws, "--model", str(model), "--split", "test")
    mine = json.loads((model / "eval-test.json").read_text())
    other = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=24), ws).path
    assert other.name != mine["prepared"]
    evaluate(ws, "--model", "tiny", "--prepared", str(other), "--split", "test")
    assert json.loads((model / "eval-test.json").read_text()) == mine
    assert card_accuracy(model, "test") == pytest.approx(mine["accuracy"], abs=1e-4)
    [elsewhere] = list(ws.evals_dir.glob(f"tiny-*/eval-test-on-{other.name[:8]}.json"))
    assert json.loads(elsewhere.read_text())["prepared"] == other.name


# 10. --errors points at the file's rows -------------------------------------------------------------------

def test_mistakes_index_the_files_rows_blank_rows_included(own, tmp_path):
    ws, model = own
    rows = [("", 1), ("   ", 0), ("a brilliant wonderful film", 0), ("", 1), ("a dull boring plot", 1),
            ("a brilliant wonderful film", 1)]
    data = tmp_path / "mine.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    evaluate(ws, "--model", str(model), "--data", str(data), "--errors", "5", "--output", str(tmp_path / "r.json"))
    mistakes = [json.loads(line) for line in (tmp_path / "r-errors.jsonl").read_text().splitlines()]
    assert mistakes, "the tiny model should get at least one of these wrong"
    for m in mistakes:
        assert rows[m["index"]][0] == m["text"]  # the 0-based data row of the file
        assert rows[m["index"]][1] == ["negative", "positive"].index(m["true"])


# 11. text from the data never reaches the terminal raw ---------------------------------------------------

def test_the_mistakes_table_escapes_control_characters(own, tmp_path):
    ws, model = own
    evil = "a dull boring plot \x1b]0;pwned\x07\x1b[31m red"
    data = tmp_path / "mine.csv"
    data.write_text("text,label\n" + f'"{evil}",1\n"{evil}",0\n')  # one of the two is a mistake, whatever is predicted
    out = evaluate(ws, "--model", str(model), "--data", str(data), "--errors", "5", "--output", str(tmp_path / "r.json"))
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "\\x1b]0;pwned\\x07" in out.stdout


# 12. one damaged run.json does not hide the others -------------------------------------------------------

def test_runs_lists_every_run_when_one_is_damaged(own):
    ws, model = own
    broken = ws.runs_dir / "broken"
    broken.mkdir()
    (broken / "run.json").write_text('{"config": ')
    out = runner.invoke(app, ["runs", "--workdir", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "tiny" in out.stdout and "damaged" in out.stdout and "broken" in out.stdout
    out = runner.invoke(app, ["runs", "--workdir", str(ws.root), "--format", "json"])
    listed = {r["run"]: r for r in json.loads(out.stdout)}
    assert listed["tiny"]["finished"] and "run.json" in listed["broken"]["damaged"]


# 20 (part). piped to a file, tables keep every class name whole -------------------------------------------

def test_tables_piped_to_a_file_do_not_cut_class_names(tmp_path):
    from rtsent import console

    names = ["abbreviation_and_acronym_expansion", "description_of_an_entity", "human_being_or_group",
             "location_on_the_planet", "numeric_value_or_quantity"]
    k = len(names)
    report = {"split": "test", "examples": 10, "model": "/a/long/path/to/the/model", "accuracy": 0.5, "macro_f1": 0.5,
              "ece": 0.1, "examples_per_s": 10.0, "written_to": "/x/eval-test.json",
              "per_class": {n: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for n in names},
              "confusion_matrix": {"labels": names, "rows_true_cols_predicted": [[0] * k for _ in range(k)]}}
    with open(tmp_path / "log.txt", "w") as fh, pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", fh)
        console.print_evaluation(report)
    log = (tmp_path / "log.txt").read_text()
    assert "…" not in log
    for name in names:
        assert log.count(name) == 3  # per-class row, confusion column and row


# 22. a zero-shot base model scores prepared data with the data's own prompt -----------------------------

def test_zero_shot_takes_the_prepared_datas_prompt(tmp_path, tiny_model_dir, data_dir):
    ws = tmp_path / "ws"
    prepared = runner.invoke(app, ["prepare", "--data", str(data_dir), "--model", str(tiny_model_dir), "--max-len", "32",
                                   "--template", "Review: {text}\\nVerdict:", "--label-words", " neg, pos",
                                   "--label-names", "bad,good", "--workdir", str(ws)])
    assert prepared.exit_code == 0, prepared.output
    out = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--zero-shot", "--split", "test",
                              "--no-plots", "--precision", "fp32", "--output", str(tmp_path / "r.json"),
                              "--workdir", str(ws)])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["prompt"] == {"template": "Review: {text}\nVerdict:", "label_words": [" neg", " pos"],
                                "label_names": ["bad", "good"]}
    assert set(report["per_class"]) == {"bad", "good"}
    # Told otherwise, it is scored as told (and then the prepared data does not fit that prompt).
    other = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--zero-shot", "--split", "test",
                                "--template", "{text}\\nSentiment:", "--workdir", str(ws)])
    assert other.exit_code == 1 and "another tokenizer or prompt" in other.output


# 20 (part). a run's name works wherever its folder does -------------------------------------------------

def test_comparing_a_run_by_name_with_a_zero_shot_base_model(own, tiny_model_dir, tmp_path):
    ws, model = own
    data = tmp_path / "mine.csv"
    data.write_text("text,label\na brilliant wonderful film,1\na dull boring plot,0\n")
    out = runner.invoke(app, ["evaluate", "--model", "tiny", "--model", str(tiny_model_dir), "--zero-shot",
                              "--template", "Review: {text}\\nVerdict:", "--label-words", " neg, pos", "--data",
                              str(data), "--no-plots", "--precision", "fp32", "--output", str(tmp_path / "c.json"),
                              "--workdir", str(ws.root)])
    assert out.exit_code == 0, out.output
    first, second = json.loads((tmp_path / "c.json").read_text())["models"]
    assert first["model"] == str(model) and first["prompt"]["template"] == "Review: {text}\nSentiment:"  # the run's own
    assert second["model"] == str(tiny_model_dir) and second["prompt"]["template"] == "Review: {text}\nVerdict:"


# 20 (part). a temperature stuck at its bound is explained ----------------------------------------------

def test_a_temperature_at_its_upper_bound_gets_a_note(capsys):
    import numpy as np
    from types import SimpleNamespace

    from rtsent import console
    from rtsent.core.calibration import temperature_record

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.stack([labels * 0.3, (1 - labels) * 0.3], axis=1) + rng.normal(0, 1, (400, 2))  # below chance
    record = temperature_record(scores, labels)
    assert record["temperature"] > 99 and "upper bound 100" in record["note"]
    good = temperature_record(np.stack([1 - labels, labels], axis=1) * 2.0 + rng.normal(0, 1, (400, 2)), labels)
    assert "note" not in good and 0.1 < good["temperature"] < 10
    result = SimpleNamespace(best_accuracy=0.4, run=SimpleNamespace(name="r"), steps=4, seconds=1.0,
                             train_examples_per_s=10.0, best_step=4, total_params=0, model_dir="m", calibration=record)
    console.print_trained(result)
    assert "note: T reached its upper bound 100" in capsys.readouterr().out


def test_training_curves_png_draws_the_metrics_log(trained, tmp_path):
    from rtsent.plots import training_curves

    space, result = trained
    assert result.plots == (result.run.dir / "plots" / "training.png",)
    assert_png(result.plots[0])
    events = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
    train_loss = [(e["step"], e["loss"]) for e in events if "loss" in e]
    accuracy = [(e["step"], e["eval_accuracy"]) for e in events if "eval_accuracy" in e]
    plot = training_curves(result.run.metrics, tmp_path / "curves.png", result.best_step)
    for name, expected in (("train loss", train_loss), ("validation accuracy", accuracy)):
        drawn = plot.drawn[name]
        assert [step for step, _ in drawn] == [step for step, _ in expected], name
        assert [value for _, value in drawn] == pytest.approx([value for _, value in expected]), name
    assert plot.drawn["best_step"] == result.best_step
    assert dict(accuracy)[result.best_step] == pytest.approx(result.best_accuracy)


def test_report_and_runs_of_the_trained_run(trained, tmp_path):
    space, result = trained
    ws = ["--workdir", str(space.root)]
    out = runner.invoke(app, ["report", "tiny", *ws])
    assert out.exit_code == 0, out.output
    assert f"step {result.best_step}" in out.output and "training.png" in out.output
    assert "256 rows" in out.output  # the prepared train split
    out = runner.invoke(app, ["report", "tiny", "--format", "json", "--output", str(tmp_path / "r.json"), *ws])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "r.json").read_text())
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    assert summary["best"] == meta["best"] and summary["calibration"] == meta["calibration"]
    assert summary["training"]["steps"] == result.steps
    assert summary["prepared"]["splits"]["validation"]["rows"] == 64
    md_path = result.run.dir / "report-test.md"
    out = runner.invoke(app, ["report", "tiny", "--format", "md", "--output", str(md_path), *ws])
    assert out.exit_code == 0, out.output
    md = md_path.read_text()
    assert "![training](plots/training.png)" in md and (md_path.parent / "plots/training.png").is_file()
    # a named --output replaces an earlier report of either format, never another file
    again = runner.invoke(app, ["report", "tiny", "--format", "md", "--output", str(md_path), *ws])
    assert again.exit_code == 0 and md_path.read_text() == md
    assert runner.invoke(app, ["report", "tiny", "--format", "json", "--output", str(tmp_path / "r.json"), *ws]).exit_code == 0
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    refused = runner.invoke(app, ["report", "tiny", "--format", "md", "--output", str(notes), *ws])
    assert refused.exit_code == 2 and "exists and is not an rtsent run report" in " ".join(refused.output.split())
    assert notes.read_text() == "# my notes\n"
    md_path.unlink()
    out = runner.invoke(app, ["runs", "--format", "json", *ws])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [r["run"] for r in rows] == ["tiny"]
    assert rows[0]["validation_accuracy"] == result.best_accuracy and rows[0]["best_step"] == result.best_step
    missing = runner.invoke(app, ["report", "nope", *ws])
    assert missing.exit_code == 1 and "runs: tiny" in missing.output


def test_runs_newest_first_and_no_plots(tiny_model_dir, data_dir, tmp_path):
    ws = ["--workdir", str(tmp_path / "ws")]
    assert runner.invoke(app, ["prepare", "--data", str(data_dir), "--model", str(tiny_model_dir), "--max-len", "32", *ws]).exit_code == 0
    for name, extra in (("first", []), ("second", ["--no-plots"])):
        out = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "8",
                                  "--lr", "3e-3", "--precision", "fp32", "--run-name", name, *extra, *ws])
        assert out.exit_code == 0, out.output
    # A barely trained model: its temperature is the NLL minimum of a brute-force grid over log T.

    from rtsent.artifacts.workspace import Workspace

    clf, scores, y = validation_scores(Workspace.resolve(tmp_path / "ws"), tmp_path / "ws/runs/first/model")
    grid = np.exp(np.linspace(math.log(0.01), math.log(100), 4001))
    best = grid[int(np.argmin(grid_nll(scores, y, grid)))]
    assert abs(math.log(clf.temperature) - math.log(best)) <= 0.003, (clf.temperature, best)
    assert (tmp_path / "ws/runs/first/plots/training.png").is_file()
    assert not (tmp_path / "ws/runs/second/plots").exists()
    out = runner.invoke(app, ["runs", *ws])
    assert out.exit_code == 0, out.output
    assert out.output.index("│ second") < out.output.index("│ first")
    bad = runner.invoke(app, ["runs", "--format", "xml", *ws])
    assert bad.exit_code == 2 and "--format must be one of" in bad.output


def test_cli_import_does_not_load_matplotlib():
    code = "import sys; from rtsent.cli import app; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("command", [["report"], ["runs"]])
def test_help_of_report_and_runs(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_report_without_runs_and_bad_evaluate_options_are_one_line(tmp_path):
    out = runner.invoke(app, ["report", "--workdir", str(tmp_path / "empty")])
    assert out.exit_code == 1 and "no runs in" in out.output and "Traceback" not in out.output
    out = runner.invoke(app, ["evaluate", "--data", "x.csv", "--prepared", "abc", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "--data and --prepared" in out.output
    out = runner.invoke(app, ["evaluate", "--errors", "-1", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "--errors must be 0 or more" in out.output
