"""The evaluate stage: metrics against the model's own forward, zero-shot, evaluate --data (ClassLabel
columns, errors, plots, comparing models), the temperature train fits and the calibration evaluate
reports, and the warnings it gives. The arithmetic of calibration itself: test_calibration.py."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rtsent import evaluate
from rtsent.artifacts.prepared import find_prepared, load_prepared
from rtsent.cli import app
from rtsent.config import EvaluateConfig, PromptConfig
from conftest import reference_scores, synthetic_split
from helpers import assert_png, default_prompt, grid_nll, prep

runner = CliRunner()


def test_evaluate_reports_metrics_and_writes_json(trained, data_dir, tmp_path):
    """On a private copy of the trained workspace: evaluate on validation writes its report and the card's
    validation metrics into the run's model folder, which the shared run must keep as trained (test_export reads
    it; before the tests were sorted by subject, this test happened to run after that one)."""
    from rtsent.artifacts.workspace import Workspace

    shared, result = trained
    shutil.copytree(shared.root, tmp_path / "ws")
    space = Workspace.resolve(tmp_path / "ws")
    model = space.run(result.run.name).model
    report = evaluate.run(EvaluateConfig(), space)  # default: the latest run's model
    assert report["model"] == str(model)
    assert report["examples"] == 64
    assert report["accuracy"] >= 0.9
    import pyarrow.parquet as pq
    from conftest import reference_scores

    validation = pq.read_table(data_dir / "validation.parquet").to_pydict()
    prompts = [default_prompt(t) for t in validation["text"]]  # short enough for max-len 32 (no truncation)
    pred = reference_scores(model, prompts).argmax(1)
    truth = validation["label"]
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [
        [sum(1 for t, p in zip(truth, pred) if (t, p) == (i, j)) for j in (0, 1)] for i in (0, 1)]
    assert report["accuracy"] == sum(int(t == p) for t, p in zip(truth, pred)) / 64
    written = json.loads((model / "eval-validation.json").read_text())  # what the file on disk says
    assert written["accuracy"] == sum(int(t == p) for t, p in zip(truth, pred)) / 64


def test_zero_shot_report_goes_under_the_workspace(ws, tiny_model_dir, data_dir, tmp_path):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 3):
    evaluate never writes into a model folder rtsent did not make."""
    model = tmp_path / "users-model"
    shutil.copytree(tiny_model_dir, model)
    before = sorted(p.name for p in model.iterdir())
    prep(ws, model, data_dir, max_len=32)
    report = evaluate.run(EvaluateConfig(model=str(model), prompt=PromptConfig()), ws)
    assert sorted(p.name for p in model.iterdir()) == before
    written = ws.evals_dir / report["written_to"].split("/evals/")[1]
    # The file under evals/ holds this model's figures: the accuracy of its own forward on the split.
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "validation.parquet").to_pydict()
    pred = reference_scores(model, [default_prompt(t) for t in table["text"]]).argmax(1)
    expected = float((pred == np.array(table["label"])).mean())
    assert written.is_file() and json.loads(written.read_text())["accuracy"] == pytest.approx(expected)
    assert json.loads(written.read_text())["model"] == str(model)


def test_zero_shot_metrics_equal_a_full_forward_by_hand(ws, tiny_model_dir, data_dir):
    """A path that had no test before issue #7 (was test_workflows.py)."""
    import pyarrow.parquet as pq

    prep(ws, tiny_model_dir, data_dir, max_len=64)
    report = evaluate.run(EvaluateConfig(model=str(tiny_model_dir), prompt=PromptConfig(), precision="fp32"), ws)
    table = pq.read_table(data_dir / "validation.parquet").to_pydict()
    scores = reference_scores(tiny_model_dir, [default_prompt(t) for t in table["text"]])
    pred = scores.argmax(1)
    truth = np.array(table["label"])
    assert report["accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-9)
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [
        [int(((truth == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def test_evaluate_data_reads_a_classlabel_column_by_name_not_by_position(trained, tmp_path):
    """A finding of the pretrained-model review (was test_review_fixes.py, finding 1):
    evaluate --data matches a ClassLabel column to the label names by name, as prepare does."""
    import datasets

    space, result = trained
    rows = synthetic_split(64, seed=11)
    names = ["negative", "positive"]
    # The same reviews twice: labels as plain names (matched by name, no ClassLabel), and as a ClassLabel
    # whose class order is the reverse of the model's label words.
    plain = tmp_path / "plain.parquet"
    datasets.Dataset.from_dict({"text": rows["text"], "label": [names[y] for y in rows["label"]]}).to_parquet(plain)
    reversed_names = ["positive", "negative"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=reversed_names)})
    labelled = tmp_path / "classlabel.parquet"
    datasets.Dataset.from_dict({"text": rows["text"], "label": [1 - y for y in rows["label"]]},
                               features=features).to_parquet(labelled)

    def accuracy(path):
        cfg = EvaluateConfig(model=str(result.model_dir), data=str(path), precision="fp32", plots=False,
                             output=str(tmp_path / f"{path.stem}.json"))
        return evaluate.run(cfg, space)["accuracy"]

    by_name = accuracy(plain)
    assert by_name > 0.75  # far from 0.5, so a swap (1 - accuracy) cannot pass for it
    assert accuracy(labelled) == by_name


def test_contextual_calibration_uses_the_temperature_of_the_reviews_it_corrects(trained, tmp_path):
    """A finding of the pretrained-model review (was test_review_fixes.py, finding 3):
    evaluate --calibrate on a model with a temperature: content-free probabilities on the
    same scale."""
    import torch

    from conftest import _reference_model
    from rtsent.core.calibration import CONTENT_FREE
    from rtsent.engines import open_classifier

    import shutil

    space, result = trained
    # The tiny run gets all validation right, so its fitted T is 1: give a copy of it a temperature of 2.5,
    # far enough from 1 that the two scales differ.
    folder = tmp_path / "model"
    shutil.copytree(result.model_dir, folder)
    meta = json.loads((folder / "rtsent.json").read_text())
    t = meta["calibration"]["temperature"] = 2.5
    (folder / "rtsent.json").write_text(json.dumps(meta))
    report = evaluate.run(EvaluateConfig(model=str(folder), split="test", precision="fp32", plots=False,
                                         calibrate=True, output=str(tmp_path / "cal.json")), space)
    # The content-free prompts' label-word logits from the model's own forward, one prompt at a time.
    rows = open_classifier(str(folder), engine="torch", precision="fp32").encoder.encode(list(CONTENT_FREE))
    tok, model = _reference_model(str(result.model_dir))
    with torch.no_grad():
        z = np.array([model(torch.tensor([r])).logits[0, -1, [w[0][0] for w in meta["label_words"]]].double().numpy()
                      for r in rows.input_ids])
    scaled = np.exp(z / t) / np.exp(z / t).sum(axis=1, keepdims=True)
    unscaled = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_cf = np.array(report["calibration"]["contextual"]["p_cf"])
    np.testing.assert_allclose(p_cf, scaled.mean(axis=0), atol=1e-5)
    assert np.abs(p_cf - unscaled.mean(axis=0)).max() > 1e-3


def test_evaluating_the_validation_split_of_a_trained_model_warns_that_it_is_optimistic(trained, tmp_path):
    """A finding of the pretrained-model review (was test_review_fixes.py, a smaller finding):
    evaluate's headline on validation, the split that chose the checkpoint,
    carries a warning. On a private copy of the trained workspace, as test_evaluate_reports_metrics_and_writes_json
    says why."""
    from typer.testing import CliRunner

    from rtsent.artifacts.workspace import Workspace
    from rtsent.cli import app

    shared, result = trained
    shutil.copytree(shared.root, tmp_path / "ws")
    space = Workspace.resolve(tmp_path / "ws")
    model = space.run(result.run.name).model
    common = ["--workdir", str(space.root), "--model", str(model), "--precision", "fp32", "--no-plots"]
    on_validation = CliRunner().invoke(app, ["evaluate", "--split", "validation", "--output", str(tmp_path / "v.json"),
                                             *common])
    on_test = CliRunner().invoke(app, ["evaluate", "--split", "test", "--output", str(tmp_path / "t.json"), *common])
    assert on_validation.exit_code == 0 and on_test.exit_code == 0
    assert "optimistic" in json.loads((tmp_path / "v.json").read_text())["warning"]
    assert "note: validation chose this model's checkpoint" in " ".join(on_validation.output.split())
    assert "warning" not in json.loads((tmp_path / "t.json").read_text()) and "optimistic" not in on_test.output


@pytest.fixture(scope="module")
def barely_trained(tmp_path_factory, tiny_model_dir, data_dir):
    """Three steps of training: validation is not separable, so the fitted temperature is a real one (T != 1)."""
    from rtsent import prepare, train
    from rtsent.artifacts.workspace import Workspace
    from rtsent.config import PrepareConfig, TrainConfig

    space = Workspace.resolve(tmp_path_factory.mktemp("barely-ws"))
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), space)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=3e-3, batch_size=8, max_steps=3, precision="fp32",
                                   run_name="barely", warmup=0.0, plots=False, onnx=False), space)
    return space, result


def forward_scores(model_dir, rows):
    """Label-word logits of the model's own full forward on prompt ids, one unpadded row at a time."""
    import torch
    from conftest import reference_scores

    return torch.tensor(reference_scores(model_dir, rows), dtype=torch.float64)


def test_the_fitted_temperature_minimises_the_validation_nll_of_the_models_own_forward(barely_trained):
    import torch
    import torch.nn.functional as F


    space, result = barely_trained
    cal = json.loads((result.model_dir / "rtsent.json").read_text())["calibration"]
    dd = load_prepared(find_prepared(space, None)).dataset
    scores = forward_scores(result.model_dir, dd["validation"]["input_ids"])  # no rtsent scoring code
    y = torch.tensor(dd["validation"]["labels"])
    grid = np.exp(np.linspace(math.log(0.01), math.log(100), 4001))
    best = grid[int(np.argmin(grid_nll(scores, y, grid)))]
    assert abs(math.log(cal["temperature"]) - math.log(best)) <= 0.003, (cal["temperature"], best)
    assert abs(math.log(best)) > 0.05  # a temperature that matters, unlike a separable split's T = 1
    assert cal["fitted_on"] == "validation" and cal["examples"] == 64 == len(y)
    assert cal["nll_before"] == pytest.approx(F.cross_entropy(scores, y).item(), abs=1e-4)
    assert cal["nll_after"] == pytest.approx(F.cross_entropy(scores / best, y).item(), abs=1e-4)
    timing = json.loads((result.model_dir / "rtsent.json").read_text())["training"]
    assert timing["steps"] == 3 and timing["train_examples"] == 256 and timing["seconds"] > 0


def test_a_separable_validation_split_keeps_t_at_one(trained):
    import torch


    space, result = trained
    cal = json.loads((result.model_dir / "rtsent.json").read_text())["calibration"]
    dd = load_prepared(find_prepared(space, None)).dataset
    scores = forward_scores(result.model_dir, dd["validation"]["input_ids"])
    if not bool((scores.argmax(-1) == torch.tensor(dd["validation"]["labels"])).all()):
        pytest.skip("the shared tiny model is not separable on this machine")
    assert cal["temperature"] == 1.0 and "kept T = 1" in cal["note"]


def write_labelled_csv(path: Path, n: int = 40, flipped: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[list[str], list[int]]:
    """Synthetic reviews; some labels written as names, and a few deliberately wrong (sure mistakes)."""
    import random

    from conftest import synthetic_review

    rng = random.Random(7)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        texts.append(synthetic_review(rng, y))
        labels.append(1 - y if i in flipped else y)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        for i, (t, y) in enumerate(zip(texts, labels)):
            w.writerow([t, ("negative", "positive")[y] if i % 3 == 0 else y])
    return texts, labels


def independent_bins(probs: np.ndarray, labels: np.ndarray, bins: int) -> list[tuple[int, float]]:
    """Per bin (count, accuracy), bin b holding confidences in (b/bins, (b+1)/bins]; computed by a plain loop."""
    out = [[0, 0] for _ in range(bins)]
    for row, y in zip(probs, labels):
        conf = row.max()
        b = min(bins - 1, max(0, math.ceil(round(conf * bins, 9)) - 1))  # float32 rounding may pass 1.0
        out[b][0] += 1
        out[b][1] += int(row.argmax() == y)
    return [(c, r / c if c else None) for c, r in out]


def test_evaluate_data_csv_errors_and_plots_match_the_models_probabilities(trained, tmp_path):
    from rtsent import evaluate
    from rtsent.config import EvaluateConfig
    from rtsent.engines import open_classifier
    from rtsent.plots import confusion, probability_histogram, reliability_diagram

    space, result = trained
    data = tmp_path / "mine.csv"
    texts, labels = write_labelled_csv(data)
    report = evaluate.run(EvaluateConfig(model=str(result.model_dir), data=str(data), text_column="review", precision="fp32",
                                         label_column="sentiment", errors=2, output=str(tmp_path / "r.json")), space)
    assert report["examples"] == 40 and report["split"] == "data-mine" and report["prepared"] is None
    assert report["source"]["rows"] == 40
    # Independently: the classifier's public probabilities (temperature applied) on the texts as written.
    probs = open_classifier(str(result.model_dir), precision="fp32").probabilities(texts)
    y = np.array(labels)
    pred = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx((pred == y).mean())
    expected_confusion = [[int(((y == i) & (pred == j)).sum()) for j in (0, 1)] for i in (0, 1)]
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == expected_confusion
    bins = independent_bins(probs, y, 15)
    assert [(b["count"], b["accuracy"]) for b in report["reliability"]["bins"]] == \
        [(c, pytest.approx(a) if a is not None else None) for c, a in bins]
    # the flipped rows are mistakes the model is sure of (it learned the sentiment words)
    wrong = np.flatnonzero(pred != y)
    assert {0, 1, 2, 3} <= set(wrong.tolist())
    lines = [json.loads(line) for line in Path(report["errors"]["written_to"]).read_text().splitlines()]
    assert len(lines) == len(wrong) == report["errors"]["count"]
    assert [r["probability"] for r in lines] == sorted((r["probability"] for r in lines), reverse=True)
    for r in lines:
        assert r["text"] == texts[r["index"]]
        assert r["true"] == ("negative", "positive")[labels[r["index"]]]
        assert r["probability"] == pytest.approx(probs[r["index"]].max(), abs=1e-5)
    assert report["errors"]["top"] == lines[:2]
    # The plots: real PNGs, drawing the numbers in the report.
    written = json.loads((tmp_path / "r.json").read_text())
    assert [Path(p).name for p in written["plots"]] == ["r-confusion.png", "r-reliability.png", "r-probabilities.png"]
    for p in written["plots"]:
        assert_png(Path(p))
    drawn = confusion(written, tmp_path / "c.png").drawn
    assert drawn["counts"] == expected_confusion
    assert drawn["normalised"][0] == pytest.approx([v / sum(expected_confusion[0]) for v in expected_confusion[0]])
    drawn = reliability_diagram(written, tmp_path / "rel.png").drawn
    assert drawn["counts"] == [c for c, _ in bins]
    assert drawn["accuracy"] == pytest.approx([a for c, a in bins if c])
    drawn = probability_histogram(written, tmp_path / "h.png").drawn
    p_true = probs[np.arange(40), y]
    for cls, name in enumerate(("negative", "positive")):
        mine = p_true[y == cls]
        hand = [int(((mine >= k / 20) & (mine < (k + 1) / 20)).sum()) for k in range(20)]
        hand[-1] += int((mine == 1.0).sum())
        assert drawn[name] == hand == written["probability_histogram"]["counts"][name]


def test_evaluate_test_split_reports_ece_before_and_after_temperature(barely_trained, data_dir, tmp_path):
    import pyarrow.parquet as pq

    from rtsent import evaluate
    from rtsent.config import EvaluateConfig

    space, result = barely_trained
    # fp32 like the reference forward (auto is bf16 on a CPU with native bf16)
    report = evaluate.run(EvaluateConfig(split="test", output=str(tmp_path / "t.json"), plots=False, errors=0,
                                         precision="fp32"), space)
    # mistakes on a prepared split: the review decoded from its ids, without the template
    confusion = report["confusion_matrix"]["rows_true_cols_predicted"]
    assert report["errors"]["count"] == confusion[0][1] + confusion[1][0] and report["errors"]["top"] == []
    originals = set(pq.read_table(data_dir / "test.parquet").column("text").to_pylist())
    for line in Path(report["errors"]["written_to"]).read_text().splitlines():
        assert json.loads(line)["text"] in originals
    # Before and after the temperature, from the model's own forward and a plain binning loop
    dd = load_prepared(find_prepared(space, None)).dataset
    z = forward_scores(result.model_dir, dd["test"]["input_ids"]).numpy()
    y = np.array(dd["test"]["labels"])
    t = json.loads((result.model_dir / "rtsent.json").read_text())["calibration"]["temperature"]

    def ece(probs):
        counts = independent_bins(probs, y, 15)
        conf = [[row.max() for row in probs if min(14, max(0, math.ceil(round(row.max() * 15, 9)) - 1)) == b]
                for b in range(15)]
        return sum(n / len(y) * abs(acc - np.mean(c)) for (n, acc), c in zip(counts, conf) if n)

    softmax = lambda a: np.exp(a - a.max(1, keepdims=True)) / np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)
    temp = report["calibration"]["temperature"]
    assert temp["before"]["ece"] == pytest.approx(ece(softmax(z)), abs=1e-4)
    assert temp["after"]["ece"] == pytest.approx(ece(softmax(z / t)), abs=1e-4)
    assert temp["before"]["ece"] != pytest.approx(temp["after"]["ece"], abs=1e-4)  # T mattered
    assert report["accuracy"] == pytest.approx(float((z.argmax(1) == y).mean()))  # and changed no label
    assert "plots" not in report and not (tmp_path / "plots").exists()
    validation = evaluate.run(EvaluateConfig(split="validation", output=str(tmp_path / "v.json"), plots=False), space)
    assert "fitted on validation" in validation["calibration"]["temperature"]["warning"]


def test_cli_evaluate_data_errors_calibrate_and_compare(trained, tiny_model_dir, tmp_path):
    space, result = trained
    data = tmp_path / "mine.csv"
    write_labelled_csv(data)
    common = ["--data", str(data), "--text-column", "review", "--label-column", "sentiment", "--workdir", str(space.root)]
    out = runner.invoke(app, ["evaluate", "--model", str(result.model_dir), "--errors", "3",
                              "--output", str(tmp_path / "one.json"), *common])
    assert out.exit_code == 0, out.output
    assert "3 most confident of" in out.output
    one = json.loads((tmp_path / "one.json").read_text())
    assert Path(one["errors"]["written_to"]) == tmp_path / "one-errors.jsonl" and "mistakes written to" in out.output
    assert all(Path(p).is_file() and str(p) in out.output for p in one["plots"])
    # zero-shot base model with contextual calibration and the fine-tuned model, side by side
    out = runner.invoke(app, ["evaluate", "--model", str(result.model_dir), "--model", str(tiny_model_dir),
                              "--zero-shot", "--calibrate", "--no-plots", "--precision", "fp32", "--output", str(tmp_path / "all.json"), *common])
    assert out.exit_code == 0, out.output
    combined = json.loads((tmp_path / "all.json").read_text())
    first, second = combined["models"]
    assert first["model"] == str(result.model_dir) and second["model"] == str(tiny_model_dir)
    assert first["examples"] == second["examples"] == 40
    # The zero-shot model's contextual calibration, by hand from its own forward: p_cf is the mean softmax
    # of the content-free prompts, each review's probabilities are divided by it and renormalised.
    from conftest import reference_probabilities

    texts, labels = write_labelled_csv(tmp_path / "again.csv")
    p_cf = reference_probabilities(tiny_model_dir, [default_prompt(t) for t in ("N/A", "", "[MASK]")]).mean(0)
    ctx = second["calibration"]["contextual"]
    assert ctx["content_free"] == ["N/A", "", "[MASK]"]
    np.testing.assert_allclose(ctx["p_cf"], p_cf, atol=1e-5)
    adjusted = reference_probabilities(tiny_model_dir, [default_prompt(t) for t in texts]) / p_cf
    assert second["accuracy"] == pytest.approx(float((adjusted.argmax(1) == np.array(labels)).mean()))
    assert str(tiny_model_dir) in out.output and "comparison written to" in out.output
    bad = runner.invoke(app, ["evaluate", "--model", str(result.model_dir), "--data", str(data), "--workdir", str(space.root)])
    assert bad.exit_code == 2 and "no text column 'text'" in bad.output


def test_a_named_output_replaces_an_earlier_report_never_the_data_or_another_file(trained, tmp_path):
    space, result = trained
    data = tmp_path / "mine.csv"
    write_labelled_csv(data)
    written = data.read_bytes()
    common = ["--model", str(result.model_dir), "--data", str(data), "--text-column", "review", "--label-column",
              "sentiment", "--no-plots", "--precision", "fp32", "--workdir", str(space.root)]
    for target in (data, tmp_path / "notes.json", tmp_path):  # the data itself, a user's JSON file, a folder
        if target.name == "notes.json":
            target.write_text('{"mine": 1}\n')
        before = target.read_bytes() if target.is_file() else None
        out = runner.invoke(app, ["evaluate", *common, "--output", str(target)])
        assert out.exit_code == 2, out.output
        assert out.output.startswith("error: --output") and "Traceback" not in out.output, out.output
        assert before is None or target.read_bytes() == before
    assert data.read_bytes() == written
    report = tmp_path / "r.json"
    for _ in range(2):  # the second run replaces the first run's report
        out = runner.invoke(app, ["evaluate", *common, "--output", str(report)])
        assert out.exit_code == 0, out.output
        assert json.loads(report.read_text())["examples"] == 40
    out = runner.invoke(app, ["evaluate", *common, "--model", str(result.model_dir), "--output", str(data)])
    assert out.exit_code == 2 and data.read_bytes() == written


def test_rows_with_empty_text_are_left_out_of_the_figures_and_told(trained, tmp_path):
    space, result = trained
    data = tmp_path / "blank.csv"
    data.write_text('review,sentiment\na great film,1\n,0\n"  ",1\na dull film,0\n')
    out = runner.invoke(app, ["evaluate", "--model", str(result.model_dir), "--data", str(data), "--text-column", "review",
                              "--label-column", "sentiment", "--no-plots", "--precision", "fp32", "--output",
                              str(tmp_path / "b.json"), "--workdir", str(space.root)])
    assert out.exit_code == 0, out.output
    assert "skipped 2 rows with empty text; the figures count the other 2" in " ".join(out.output.split())
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["examples"] == 2 and report["source"]["skipped_empty"] == 2


def test_reports_of_two_files_with_one_name_are_both_kept_next_to_the_model(trained, tmp_path):
    """Two folders' test.csv evaluated against one run's model: the second gets its own report (and split name),
    a re-run of either replaces only its own."""
    from rtsent.artifacts.workspace import Workspace

    space, _ = trained
    shutil.copytree(space.root, tmp_path / "ws")  # a copy: the shared run's folder and card stay as they are
    ws = Workspace.resolve(tmp_path / "ws")
    model = ws.run("tiny").model
    firsts = []
    for folder in ("a", "b", "a"):
        (tmp_path / folder).mkdir(exist_ok=True)
        data = tmp_path / folder / "test.csv"
        n = 40 if folder == "a" else 20
        write_labelled_csv(data, n=n)
        out = runner.invoke(app, ["evaluate", "--model", "tiny", "--data", str(data), "--text-column",
                                  "review", "--label-column", "sentiment", "--no-plots", "--precision", "fp32",
                                  "--workdir", str(ws.root)])
        assert out.exit_code == 0, out.output
        firsts.append(sorted(p.name for p in model.glob("eval-data-test*.json")))
    reports = {json.loads(p.read_text())["source"]["data"]: json.loads(p.read_text())
               for p in model.glob("eval-data-test*.json")}
    assert firsts[0] == ["eval-data-test.json"] and len(firsts[1]) == 2 and firsts[2] == firsts[1]
    assert {k: r["examples"] for k, r in reports.items()} == {str(tmp_path / "a" / "test.csv"): 40,
                                                              str(tmp_path / "b" / "test.csv"): 20}
    assert reports[str(tmp_path / "a" / "test.csv")]["split"] == "data-test"
    assert reports[str(tmp_path / "b" / "test.csv")]["split"] == "data-test-" + firsts[1][0].split("-")[-1][:8]
