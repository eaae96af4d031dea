"""`rtsent export --seq-cls`: a standard *ForSequenceClassification folder that transformers' own
text-classification pipeline (and onnxruntime, for text-embeddings-inference's graph) score exactly like
`rtsent predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rtsent.cli import app
from conftest import synthetic_split

runner = CliRunner()
ODD = ["Ünïcödé 🎬 film\n\tis ok", "great movie", "a" * 400]


def predict_probabilities(model: Path, texts: list[str]) -> list[dict[str, float]]:
    """`rtsent predict`, torch engine, fp32: the reference the folder must match."""
    out = runner.invoke(app, ["predict", *texts, "--model", str(model), "--engine", "torch", "--precision", "fp32",
                              "--format", "json"])
    assert out.exit_code == 0, out.output
    return [row["probabilities"] for row in json.loads(out.stdout)]


def pipeline_probabilities(folder: Path, texts: list[str]) -> list[dict[str, float]]:
    """transformers' own text-classification pipeline on the folder, every class of each text."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), device="cpu")
    rows = classify(texts, top_k=None, truncation=True, batch_size=8)
    return [{r["label"]: r["score"] for r in row} for row in rows]


def export_seqcls(model: Path, out: Path) -> str:
    result = runner.invoke(app, ["export", str(model), "--seq-cls", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def assert_same(got: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        np.testing.assert_allclose([g[k] for k in e], [e[k] for k in e], atol=1e-4, rtol=0)
        assert max(g, key=g.get) == max(e, key=e.get)


@pytest.fixture(scope="module")
def seqcls_gpt2(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seqcls") / "gpt2-seq-cls"
    export_seqcls(trained[1].model_dir, folder)
    return trained[1].model_dir, folder


def test_the_pipeline_scores_the_folder_like_rtsent_predict(seqcls_gpt2, data_dir):
    model, folder = seqcls_gpt2
    import pyarrow.parquet as pq

    texts = pq.read_table(data_dir / "validation.parquet").column("text").to_pylist() + ODD
    assert_same(pipeline_probabilities(folder, texts), predict_probabilities(model, texts))


def test_the_folder_is_a_standard_sequence_classifier(seqcls_gpt2):
    from transformers import AutoTokenizer

    from rtsent.core.prompts import PromptEncoder
    from rtsent.engines import open_classifier

    model, folder = seqcls_gpt2
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((model / "rtsent.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"] == {"negative": 0, "positive": 1}
    assert config["pad_token_id"] is not None and config["max_position_embeddings"] == config["n_positions"]
    assert config["num_labels"] == 2 and config["problem_type"] == "single_label_classification"
    # vLLM's max model length: the smallest length key it reads (n_positions 128 here); benchmarks/vllm_check.py
    assert config["max_seq_len"] == meta["max_len"] == 32 < config["n_positions"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    encoder = open_classifier(str(model), engine="torch").encoder
    for text in ["fine", "dull and long", "Ünï 🎬\n\tok", ODD[1]]:  # raw review in, rtsent's whole prompt out
        encoded = encoder.encode([text])
        assert not encoded.truncated[0]  # uncut (a cut one is where vLLM's truncate_prompt_tokens comes in)
        assert tok(text)["input_ids"] == encoded.input_ids[0]
    assert meta["prompt"]["template"] == json.loads((folder / "rtsent-seqcls.json").read_text())["prompt"]
    assert isinstance(encoder, PromptEncoder)


def test_the_onnx_graph_named_logits_scores_like_the_torch_folder(seqcls_gpt2):
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, folder = seqcls_gpt2
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    batch = tok(["great wonderful film", "dull", "the plot is thin but the actors are charming"], padding=True,
                return_tensors="np")
    (logits,) = session.run(["logits"], {"input_ids": batch["input_ids"].astype(np.int64),
                                         "attention_mask": batch["attention_mask"].astype(np.int64)})
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(batch["input_ids"]),
                         attention_mask=torch.from_numpy(batch["attention_mask"])).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_a_template_prefix_is_applied_by_the_tokenizer(tmp_path, tiny_model_dir, data_dir):
    from rtsent import prepare, train
    from rtsent.config import PrepareConfig, PromptConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws")
    prompt = PromptConfig(template="Review: {text}\nSentiment:")
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32, prompt=prompt), ws)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=1e-2, batch_size=16, max_steps=4, precision="fp32",
                                   run_name="prefixed", warmup=0.0, onnx=False, plots=False), ws)
    folder = tmp_path / "prefixed-seq-cls"
    export_seqcls(result.model_dir, folder)
    assert json.loads((folder / "rtsent-seqcls.json").read_text())["prefix_applied_by_tokenizer"] is True
    texts = synthetic_split(12, seed=7)["text"] + ODD[:2]
    assert_same(pipeline_probabilities(folder, texts), predict_probabilities(result.model_dir, texts))


def test_a_soft_capped_family_is_refused_in_one_line(trained, monkeypatch):
    from rtsent import seqcls
    from rtsent.core import families
    from rtsent.errors import UsageError

    monkeypatch.setattr(families, "softcap", lambda model: 30.0)
    with pytest.raises(UsageError, match="soft-caps its logits"):
        seqcls.export_seqcls(trained[1].model_dir, Path("/nonexistent"), [], print)


def test_bad_seqcls_exports_are_one_line_and_write_nothing(trained, tmp_path, tiny_model_dir):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(trained[1].model_dir), "--seq-cls", "--output", str(taken)])
    assert result.exit_code == 2 and "already exists" in result.output and (taken / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["export", str(tiny_model_dir), "--seq-cls", "--output", str(tmp_path / "x")])
    assert result.exit_code == 1 and "rtsent.json" in result.output and not (tmp_path / "x").exists()
    result = runner.invoke(app, ["export", str(trained[1].model_dir), "--output", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--output" in result.output and "--seq-cls" in result.output
