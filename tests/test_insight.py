"""Plots, run reports, calibration, error analysis and evaluate --data, against hand-computed numbers
and independent code paths (the model's own forward, a brute-force grid, the CSV the test wrote)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rtsent.artifacts.prepared import find_prepared, load_prepared
from rtsent.core import calibration
from rtsent.cli import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 100) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert height >= min_side and width >= min_side, (path, height, width)


# --- calibration arithmetic -------------------------------------------------------------------

def test_contextual_calibration_by_hand():
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    out = calibration.contextual(probs, np.array([0.7, 0.3]))
    # row 1: (0.8/0.7, 0.2/0.3) = (8/7, 2/3) -> 24/38, 14/38; row 2: (4/7, 2) -> 4/18, 14/18
    np.testing.assert_allclose(out, [[12 / 19, 7 / 19], [2 / 9, 7 / 9]], rtol=1e-12)
    # a biased model that said "positive" for both now says "negative" for the first
    assert out.argmax(axis=1).tolist() == [0, 1]


def test_reliability_bins_and_ece_by_hand():
    # confidences 0.95 (right), 0.9 (wrong, on an edge: lower bin), 0.55 and 0.6 (right, same bin)
    probs = np.array([[0.05, 0.95], [0.9, 0.1], [0.55, 0.45], [0.4, 0.6]])
    labels = [1, 1, 0, 1]
    rel = calibration.reliability(probs, labels, 10)
    filled = {i: b for i, b in enumerate(rel["bins"]) if b["count"]}
    assert sorted(filled) == [5, 8, 9]
    assert filled[5]["count"] == 2 and filled[5]["confidence"] == pytest.approx(0.575) and filled[5]["accuracy"] == 1.0
    assert filled[8]["accuracy"] == 0.0 and filled[8]["confidence"] == pytest.approx(0.9)
    # 2/4 * 0.425 + 1/4 * 0.9 + 1/4 * 0.05
    assert rel["ece"] == pytest.approx(0.45)
    s = calibration.summary(probs, labels, 10)
    assert s["accuracy"] == 0.75
    assert s["nll"] == pytest.approx(-(math.log(0.95) + math.log(0.1) + math.log(0.55) + math.log(0.6)) / 4)


def grid_nll(z, y, grid) -> list[float]:
    """Cross-entropy of z / T for every T of a grid, by torch's own cross_entropy (a second code path)."""
    import torch
    import torch.nn.functional as F

    t = torch.tensor(grid, dtype=torch.float64)[:, None, None]
    scaled = (z[None] / t).reshape(-1, z.shape[1])
    losses = F.cross_entropy(scaled, y.repeat(len(grid)), reduction="none").reshape(len(grid), -1).mean(1)
    return losses.tolist()


def test_temperature_fit_matches_a_brute_force_grid():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)) * 4.0
    # labels drawn from softmax(logits / 2.5): the scores are overconfident by a factor of about 2.5
    p = np.exp(logits / 2.5)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    grid = np.linspace(0.2, 10.0, 9801)  # step 0.001
    z = torch.tensor(logits)
    y = torch.tensor(labels)
    losses = grid_nll(z, y, grid)
    best = grid[int(np.argmin(losses))]
    fitted = calibration.fit_temperature(logits, labels)
    assert abs(fitted - best) <= 0.002, (fitted, best)
    assert 1.5 < fitted < 4.0
    record = calibration.temperature_record(logits, labels)
    assert record["nll_before"] == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)
    assert record["nll_after"] == pytest.approx(min(losses), abs=1e-6)
    assert record["fitted_on"] == "validation"


def test_content_free_probabilities_equal_the_models_own_forward(tiny_model_dir):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rtsent.config import PromptConfig
    from rtsent.engines import open_classifier

    clf = open_classifier(str(tiny_model_dir), PromptConfig(), precision="fp32")
    got = calibration.content_free_probabilities(clf)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = GPT2LMHeadModel.from_pretrained(str(tiny_model_dir)).eval()
    words = [tok(" negative", add_special_tokens=False)["input_ids"][0], tok(" positive", add_special_tokens=False)["input_ids"][0]]
    expected = []
    for prompt in ("N/A\nSentiment:", "\nSentiment:", "[MASK]\nSentiment:"):  # "" is the bare template
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            last = model(ids).logits[0, -1, words].double()
        expected.append(torch.softmax(last, -1).numpy())
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)


# --- training: temperature, timing, curves ----------------------------------------------------

def validation_scores(space, model_dir):
    import torch

    from rtsent.engines import open_classifier

    dd = load_prepared(find_prepared(space, None)).dataset
    clf = open_classifier(str(model_dir), precision="fp32")
    scores = torch.tensor(clf.scores(dd["validation"]["input_ids"]), dtype=torch.float64)
    return clf, scores, torch.tensor(dd["validation"]["labels"])


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


# --- evaluate --data, plots, errors, compare --------------------------------------------------

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
    template = "{text}\nSentiment:"
    p_cf = reference_probabilities(tiny_model_dir, [template.format(text=t) for t in ("N/A", "", "[MASK]")]).mean(0)
    ctx = second["calibration"]["contextual"]
    assert ctx["content_free"] == ["N/A", "", "[MASK]"]
    np.testing.assert_allclose(ctx["p_cf"], p_cf, atol=1e-5)
    adjusted = reference_probabilities(tiny_model_dir, [template.format(text=t) for t in texts]) / p_cf
    assert second["accuracy"] == pytest.approx(float((adjusted.argmax(1) == np.array(labels)).mean()))
    assert str(tiny_model_dir) in out.output and "comparison written to" in out.output
    bad = runner.invoke(app, ["evaluate", "--model", str(result.model_dir), "--data", str(data), "--workdir", str(space.root)])
    assert bad.exit_code == 2 and "no text column 'text'" in bad.output


# --- report and runs --------------------------------------------------------------------------

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
