"""core.calibration and core.metrics against hand-computed numbers and independent code paths:
contextual calibration, reliability bins and ECE, the temperature fit against a brute-force grid,
content-free probabilities against the model's own forward, the probability report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtsent.core import calibration
from rtsent.core.calibration import reliability
from rtsent.core.metrics import probability_report
from helpers import default_prompt, grid_nll


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
    for prompt in map(default_prompt, ("N/A", "", "[MASK]")):  # "" is the bare template
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            last = model(ids).logits[0, -1, words].double()
        expected.append(torch.softmax(last, -1).numpy())
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)


def test_probability_report_by_hand():
    # predictions: [0, 1, 1, 0, 1]; truth: [0, 1, 0, 0, 1]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    report = probability_report(probs, [0, 1, 0, 0, 1], ("neg", "pos"))
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [0, 2]]
    assert report["per_class"]["neg"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(0.8)
    # A class in neither the truth nor the predictions has no F1 to average (scikit-learn's convention); one
    # that is predicted but never true counts with F1 0.
    three = np.array([[.1, .8, .1], [.1, .8, .1], [.1, .1, .8], [.1, .8, .1]])
    absent = probability_report(three, [1, 1, 2, 1], ("a", "b", "c"))
    assert absent["accuracy"] == 1.0 and absent["macro_f1"] == pytest.approx(1.0)
    assert absent["per_class"]["a"]["support"] == 0
    predicted_only = probability_report(three, [1, 1, 1, 1], ("a", "b", "c"))  # c predicted once, never true
    assert predicted_only["macro_f1"] == pytest.approx((2 * 3 / 4 / (1 + 3 / 4) + 0.0) / 2)
    # NLL of the true classes' probabilities 0.9, 0.7, 0.2, 0.6, 0.9
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.7, 0.2, 0.6, 0.9])))


def test_ece_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    probs = np.array([[0.75, 0.25]] * 4)
    assert reliability(probs, np.array([0, 0, 0, 1]), 10)["ece"] == pytest.approx(0.0)
    sure = np.array([[0.99, 0.01]] * 4)
    assert reliability(sure, np.array([1, 1, 0, 1]), 10)["ece"] == pytest.approx(0.99 - 0.25)
