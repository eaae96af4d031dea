"""On the real Rotten Tomatoes splits and GPT-2 tokenizer (paths from RTSENT_TEST_DATA / RTSENT_TEST_TOKENIZER).

Without the variables these tests skip; with them, a missing file is a failure. The model is a small
GPT-2 trained from scratch (no pretrained weights exist here), so the accuracy bar is well above chance
but far below what pretrained GPT-2 reaches; a wrong label position would sit at ~50 %.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtsent.cli import app

DATA = os.environ.get("RTSENT_TEST_DATA")
TOKENIZER = os.environ.get("RTSENT_TEST_TOKENIZER")
pytestmark = pytest.mark.skipif(
    not (DATA and TOKENIZER),
    reason="set RTSENT_TEST_DATA and RTSENT_TEST_TOKENIZER (../shared/data/rotten_tomatoes, "
           "../shared/models/gpt2-tokenizer) to run on the real data",
)

# Measured: 0.732 validation accuracy for this recipe (2 layers, width 64, 2 epochs, seed 42, bf16 defaults);
# seeds 1-3 gave 0.747-0.758 (benchmarks/accuracy.py). A wrong label position stays at 0.50.
ACCURACY_BAR = 0.65


@pytest.fixture(scope="module")
def gpt2_small_config(tmp_path_factory) -> Path:
    """A GPT-2-small folder without weights: GPT2Config() defaults + the real tokenizer (--from-scratch reads it)."""
    from transformers import AutoTokenizer, GPT2Config

    for name in ("train.parquet", "validation.parquet", "test.parquet"):
        assert (Path(DATA) / name).is_file(), f"missing {name} in RTSENT_TEST_DATA={DATA}"
    folder = tmp_path_factory.mktemp("gpt2-small")
    GPT2Config().save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(str(folder))
    return folder


def test_real_tokenizer_facts():
    from rtsent.config import PromptConfig
    from rtsent.core.modeling import load_tokenizer
    from rtsent.core.prompts import PromptEncoder

    tok = load_tokenizer(TOKENIZER)
    assert len(tok) == 50257 and tok.pad_token_id == 50256
    assert PromptEncoder(PromptConfig(), tok, 128).label_ids == [4633, 3967]
    seed = PromptEncoder(PromptConfig(template="{text} Sentiment: ", label_words=("neg", "pos")), tok, 128)
    assert seed.label_ids == [12480, 1930]
    assert seed.encode(["great movie"]).input_ids[0][-1] == 220  # the seed prompt ends in a lone space token
    # A word of several tokens: the tokens GPT-2 gives it after the prompt.
    several = PromptEncoder(PromptConfig(label_words=(" negative", " superlative")), tok, 128).label_words
    prompt = tok("great movie\nSentiment:")["input_ids"]
    assert list(several.classes[1][0]) == tok("great movie\nSentiment: superlative")["input_ids"][len(prompt):]
    assert tok.convert_ids_to_tokens(list(several.classes[1][0])) == ["Ġsuper", "l", "ative"]
    with pytest.raises(Exception, match="more than --max-len"):
        PromptEncoder(PromptConfig(label_words=(" negative", " superlative")), tok, 5)


def test_rotten_tomatoes_end_to_end(tmp_path, gpt2_small_config):
    runner = CliRunner()
    ws = ["--workdir", str(tmp_path / "ws")]
    model = ["--model", str(gpt2_small_config)]

    def ok(*args):
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    first = ok("prepare", "--data", DATA, *model, "--max-len", "128", *ws)
    assert "8530" in first.output and "1066" in first.output
    assert "cached" in ok("prepare", "--data", DATA, *model, "--max-len", "128", *ws).output
    ok("train", *model, "--from-scratch", "--config-overrides", "n_layer=2,n_embd=64,n_head=2",
       "--lr", "1e-3", "--epochs", "2", "--run-name", "rt", *ws)
    ok("evaluate", *ws)
    report = json.loads((tmp_path / "ws/runs/rt/model/eval-validation.json").read_text())
    assert report["examples"] == 1066
    print(f"\nreal-data validation accuracy {report['accuracy']:.4f} (bar {ACCURACY_BAR})")
    assert report["accuracy"] >= ACCURACY_BAR, report["accuracy"]
    calibration = json.loads((tmp_path / "ws/runs/rt/model/rtsent.json").read_text())["calibration"]
    assert calibration["fitted_on"] == "validation" and calibration["nll_after"] <= calibration["nll_before"]
    assert (tmp_path / "ws/runs/rt/plots/training.png").is_file()
    assert "best" in ok("report", *ws).output
    predicted = ok("predict", "great movie", *ws)
    assert ("positive" in predicted.output or "negative" in predicted.output) and "0." in predicted.output
