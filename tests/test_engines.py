"""The onnx engine against the torch engine: same prompt ids, same scores, no torch at run time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rtsent.artifacts.prepared import find_prepared, load_prepared
from rtsent.cli import app
from rtsent.config import PromptConfig

# Both engines compute the same fp32 function; they differ only in the order of floating-point
# operations (the exported graph has fused LayerNorm/GELU kernels, ORT picks other matmul kernels). Over a 2-layer, width-32 model
# that moves a score by ~1e-6 (measured 3e-7); 1e-4 is far above that and far below any wrong graph
# (another position or another label row changes scores by ~1e-1).
ATOL = 1e-4

runner = CliRunner()


def _strip_onnx(folder: Path) -> None:
    """Turn a folder into one written before the onnx engine existed."""
    meta = json.loads((folder / "rtsent.json").read_text())
    meta.pop("onnx", None)
    (folder / "rtsent.json").write_text(json.dumps(meta))
    for name in ("model.onnx", "model.int8.onnx"):
        (folder / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def plain_model(trained, tmp_path_factory) -> Path:
    """A copy of the trained model without any ONNX files (the shared fixture stays untouched)."""
    folder = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(trained[1].model_dir, folder)
    _strip_onnx(folder)
    return folder


@pytest.fixture(scope="module")
def exported(plain_model, trained, tmp_path_factory) -> Path:
    """`rtsent export MODEL --int8` on an existing folder (in the workspace that holds its validation split)."""
    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(plain_model, folder)
    result = runner.invoke(app, ["export", str(folder), "--int8", "--workdir", str(trained[0].root)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    import pyarrow.parquet as pq

    reviews = pq.read_table(data_dir / "validation.parquet").column("text").to_pylist()
    return reviews + ["", " ", "great movie", "a" * 500, "<|endoftext|> dull", "Ünïcödé 🎬 film\n\tis ok"]


def _graph_decisions(graph: Path, rows: list[list[int]], pad_id: int) -> np.ndarray:
    """A graph's decisions by onnxruntime alone, one unpadded row at a time (no rtsent scoring code)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = ({"input_ids": np.array([r], dtype=np.int64), "attention_mask": np.ones((1, len(r)), dtype=np.int64)}
             for r in rows)
    return np.array([int(session.run(None, f)[0].argmax()) for f in feeds])


def test_training_writes_a_checked_int8_graph_and_auto_uses_it(trained):
    from rtsent.engines import open_classifier

    space, result = trained
    folder = result.model_dir
    meta = json.loads((folder / "rtsent.json").read_text())
    assert meta["onnx"]["graphs"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    # The record's figures, recomputed from the prepared validation split and the two graphs
    dd = load_prepared(find_prepared(space, None)).dataset
    rows, y = dd["validation"]["input_ids"], np.array(dd["validation"]["labels"])
    fp32, int8 = (_graph_decisions(folder / name, rows, meta["onnx"]["pad_id"]) for name in ("model.onnx", "model.int8.onnx"))
    check = meta["onnx"]["int8_check"]
    assert check["examples"] == len(rows) == 64
    assert check["agreement"] == pytest.approx(float((fp32 == int8).mean()), abs=1e-5)
    assert check["accuracy_fp32"] == pytest.approx(float((fp32 == y).mean()), abs=1e-5)
    assert check["accuracy_int8"] == pytest.approx(float((int8 == y).mean()), abs=1e-5)
    assert check["accepted"] is (check["agreement"] >= 0.995 and abs(check["accuracy_int8"] - check["accuracy_fp32"]) <= 0.005)
    # On the CPU this was written on (AMX) the tiny model's int8 graph passes; another CPU's int8 kernels may
    # flip one review of this 64-review split, and then auto must not use the graph.
    for job in ("cold", "bulk"):
        clf = open_classifier(str(folder), job=job)
        if check["accepted"]:
            assert (clf.engine, clf.precision) == ("onnx", "int8") and "validated" in clf.choice.reason
        else:
            assert clf.precision != "int8"
    assert open_classifier(str(folder), engine="torch").engine == "torch"
    assert open_classifier(str(folder), precision="bf16").engine == "torch"  # onnx graphs are fp32/int8 only
    assert open_classifier(str(folder), precision="fp32", job="cold").engine == "onnx"


def test_an_int8_graph_that_fails_its_check_is_not_kept_by_train(plain_model, trained, tmp_path, monkeypatch):
    from rtsent import export
    from rtsent.artifacts import onnx_graph
    from rtsent.artifacts.model import ModelMeta
    from rtsent.engines import open_classifier

    folder = tmp_path / "model"
    shutil.copytree(plain_model, folder)
    rows = export.validation_rows(ModelMeta.read(folder), trained[0])
    assert rows is not None and len(rows[0]) == 64
    monkeypatch.setattr(onnx_graph, "INT8_MIN_AGREEMENT", 1.01)  # no graph can pass: the failure path
    monkeypatch.setattr(onnx_graph, "CHECK_CHUNK", 16)
    lines: list[str] = []
    onnx_graph.after_training(folder, lines.append, int8=True, check=rows)
    meta = json.loads((folder / "rtsent.json").read_text())
    assert meta["onnx"]["graphs"] == {"fp32": "model.onnx"} and not (folder / "model.int8.onnx").exists()
    check = meta["onnx"]["int8_check"]
    assert check["accepted"] is False and "keeps the fp32 graph" in " ".join(lines)
    # The verdict was sealed after the first 16 rows (no agreement reaches 101 %): the other 48 were not scored
    assert check["examples"] == 16 and check["stopped_early"]["of"] == 64 and "first 16 of 64" in " ".join(lines)
    assert open_classifier(str(folder), job="cold").precision == "fp32"
    # The explicit export keeps a failed graph for --precision int8, and auto still does not pick it
    onnx_graph.export_folder(folder, True, lines.append, rows)
    assert (folder / "model.int8.onnx").is_file()
    assert open_classifier(str(folder), job="cold").precision == "fp32"
    assert open_classifier(str(folder), precision="int8").precision == "int8"


@pytest.mark.parametrize("differ,checked,accepted", [
    ({3, 55}, 60, False),  # 98 of 100 at best once row 55 differs: sealed after its chunk (rows 50-59)
    ({3}, 100, True),  # 99 of 100 passes 98.5 %: every row scored
    ({3, 99}, 100, False),  # the second difference is in the last chunk: every row scored, then the verdict
])
def test_the_int8_check_stops_once_no_later_row_can_change_its_verdict(monkeypatch, differ, checked, accepted):
    """Graphs stood in for by their decisions on 100 rows: fp32 always says class 0, int8 class 1 on the rows in
    `differ`; the label of those rows is class 2, so the accuracies stay level and the agreement alone decides."""
    from types import SimpleNamespace

    from rtsent.artifacts import onnx_graph
    from rtsent.engines import onnx as onnx_engine

    class Decisions:
        def __init__(self, folder, meta, prompt, max_len, path, precision):
            self.precision = precision

        def scores(self, rows):
            chosen = [1 if self.precision == "int8" and row[0] in differ else 0 for row in rows]
            return np.eye(3)[chosen]

    monkeypatch.setattr(onnx_engine, "OnnxClassifier", Decisions)
    monkeypatch.setattr(onnx_graph, "CHECK_CHUNK", 10)
    monkeypatch.setattr(onnx_graph, "INT8_MIN_AGREEMENT", 0.985)
    meta = SimpleNamespace(prompt=None, max_len=8, graphs=lambda: {"fp32": "a.onnx", "int8": "b.onnx"})
    rows, labels = [[i] for i in range(100)], [2 if i in differ else 0 for i in range(100)]
    record = onnx_graph.check_int8(Path("unused"), meta, (rows, labels), lambda _: None)
    assert record["examples"] == checked and record["accepted"] is accepted
    seen = len([i for i in differ if i < checked])
    assert record["agreement"] == pytest.approx((checked - seen) / checked, abs=1e-5)
    assert ("stopped_early" in record) is (checked < 100)
    if checked < 100:
        assert record["stopped_early"] == {"of": 100, "differed": len(differ)}


def test_export_command_on_an_existing_folder(exported, plain_model):
    from rtsent.engines import open_classifier

    meta = json.loads((exported / "rtsent.json").read_text())
    assert meta["onnx"]["graphs"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    from rtsent.core.prompts import LabelWords

    assert meta["onnx"]["label_words"] == LabelWords.from_list(meta["label_words"]).fingerprint()
    assert "SkipLayerNormalization" in meta["onnx"]["fused_fp32"]  # GPT-2's fp32 graph is fused (the agreement test runs it)
    assert not [p.name for p in exported.iterdir() if p.name.startswith(".export-")]  # temp folder gone
    assert meta["onnx"]["int8_check"]["examples"] == 64  # checked on the workspace's validation split
    passed = meta["onnx"]["int8_check"]["accepted"]
    assert (open_classifier(str(exported)).precision == "int8") is passed  # auto takes the int8 graph once it passed
    assert open_classifier(str(exported), precision="fp32").precision == "fp32"
    assert open_classifier(str(plain_model)).engine == "torch"


def test_onnx_scores_agree_with_torch(exported, texts):
    from rtsent.engines import open_classifier

    torch_clf = open_classifier(str(exported), precision="fp32", engine="torch")
    onnx_clf = open_classifier(str(exported), precision="fp32", engine="onnx")
    rows = torch_clf.encoder.encode(texts).input_ids
    assert onnx_clf.encoder.encode(texts).input_ids == rows
    expected = torch_clf.scores(rows, batch_size=7)
    got = onnx_clf.scores(rows, batch_size=7)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert np.abs(expected).max() > 100 * ATOL  # the scores are not all ~0, so the tolerance is meaningful
    # One row at a time (batch 1, no padding) gives the same scores: padding is masked in the graph.
    np.testing.assert_allclose(np.concatenate([onnx_clf.scores([r], 1) for r in rows[:8]]), expected[:8], atol=ATOL, rtol=0)
    int8 = open_classifier(str(exported), precision="int8", engine="onnx").scores(rows, batch_size=16)
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_onnx_engine_imports_neither_torch_nor_transformers(exported):
    code = (
        "import sys\n"
        "from rtsent.cli import app\n"
        f"args = ['predict', 'great movie', 'awful boring film', '--model', {str(exported)!r}, '--format', 'json']\n"
        "try:\n"
        "    app(args)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr
    rows = json.loads(done.stdout)
    assert [r["text"] for r in rows] == ["great movie", "awful boring film"]
    assert {r["label"] for r in rows} <= {"negative", "positive"}


def test_predict_with_onnx_gives_the_labels_of_torch(exported, texts, tmp_path):
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("\n".join(t for t in texts if t.strip() and "\n" not in t) + "\n")

    def predict(*extra):
        result = runner.invoke(app, ["predict", "--file", str(reviews), "--model", str(exported), "--format", "jsonl", *extra])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    by_torch = predict("--engine", "torch", "--precision", "fp32")
    by_onnx = predict("--engine", "onnx", "--precision", "fp32")
    assert len(by_torch) == len(by_onnx) > 60
    assert [r["label"] for r in by_onnx] == [r["label"] for r in by_torch]
    np.testing.assert_allclose([r["probability"] for r in by_onnx], [r["probability"] for r in by_torch], atol=1e-4)


def test_evaluate_with_onnx_matches_torch(exported, trained, tmp_path):
    ws = ["--workdir", str(trained[0].root)]
    reports = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.json"
        result = runner.invoke(app, ["evaluate", "--model", str(exported), "--engine", engine, "--precision", "fp32",
                                     "--output", str(out), *ws])
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(out.read_text())
    assert reports["onnx"]["engine"] == "onnx" and reports["torch"]["engine"] == "torch"
    assert reports["onnx"]["engine_choice"] == {"engine": "onnx", "precision": "fp32", "reason": "as asked"}
    assert reports["onnx"]["confusion_matrix"] == reports["torch"]["confusion_matrix"]


def test_missing_graph_is_one_line_with_the_fix(plain_model):
    result = runner.invoke(app, ["predict", "great movie", "--model", str(plain_model), "--engine", "onnx"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "rtsent export" in lines[0] and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", "great movie", "--model", str(plain_model), "--precision", "int8"])
    assert result.exit_code == 1 and "rtsent export" in result.output and "--int8" in result.output


@pytest.mark.parametrize("damage, expected", [
    (lambda f: f.joinpath("model.onnx").write_bytes(f.joinpath("model.onnx").read_bytes()[:5000]), "cannot load"),
    (lambda f: f.joinpath("tokenizer.json").write_text('{"version": "1.0", "mod'), "cannot read"),
])
def test_damaged_graph_or_tokenizer_is_one_line(trained, tmp_path, damage, expected):
    folder = tmp_path / "model"
    shutil.copytree(trained[1].model_dir, folder)
    damage(folder)
    result = runner.invoke(app, ["predict", "great movie", "--model", str(folder), "--precision", "fp32"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert expected in lines[0] and "rtsent export" in lines[0]


def test_a_failed_export_keeps_the_folder_as_it_was(plain_model, tmp_path, monkeypatch):
    from rtsent.artifacts import onnx_graph

    folder = tmp_path / "model"
    shutil.copytree(plain_model, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nlong details")

    monkeypatch.setattr(onnx_graph, "_export_fp32", broken)
    logged: list[str] = []
    onnx_graph.after_training(folder, logged.append)
    failures = [line for line in logged if "ONNX export failed" in line]
    assert len(failures) == 1 and "aten::frobnicate" in failures[0] and "torch engine" in failures[0]
    assert "long details" not in failures[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_fallback_exporter_writes_a_graph_that_scores_the_same(exported, texts, tmp_path, monkeypatch):
    """When the TorchScript exporter fails, torch.export's writes the graph: the same scores, said in the log."""
    from rtsent.artifacts import onnx_graph
    from rtsent.engines import open_classifier

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)

    def broken(*args, **kwargs):
        raise RuntimeError("tracer cannot handle this")

    monkeypatch.setitem(onnx_graph.EXPORTERS, "torchscript", broken)
    logged: list[str] = []
    record = onnx_graph.export_folder(folder, log=logged.append)
    assert any("tracer cannot handle this" in line and "torch.export" in line for line in logged), logged
    assert record["exporter"].startswith("torch.onnx dynamo")
    default = open_classifier(str(exported), precision="fp32", engine="onnx")
    fallback = open_classifier(str(folder), precision="fp32", engine="onnx")
    rows = default.encoder.encode(texts).input_ids
    np.testing.assert_allclose(fallback.scores(rows, 7), default.scores(rows, 7), atol=ATOL, rtol=0)
    assert json.loads((exported / "rtsent.json").read_text())["onnx"]["exporter"].startswith("torch.onnx torchscript")


# --- prompt encoding: the tokenizer.json adapter against transformers --------------------------------

def _encoders(tokenizer_folder: Path, tmp_path: Path, prompt: PromptConfig, max_len: int):
    from rtsent.engines.onnx import JsonTokenizer
    from rtsent.artifacts.onnx_graph import write_tokenizer_json
    from rtsent.core.modeling import load_tokenizer
    from rtsent.core.prompts import PromptEncoder

    tok = load_tokenizer(str(tokenizer_folder))
    write_tokenizer_json(tok, tmp_path / "tokenizer.json")
    return PromptEncoder(prompt, tok, max_len), PromptEncoder(prompt, JsonTokenizer(tmp_path / "tokenizer.json"), max_len)


any_text = st.text(st.characters(codec="utf-8"), max_size=300) | st.lists(
    st.sampled_from(["great", " movie", "\n", "Sentiment:", "<|endoftext|>", "  ", "é", "🎬", "'s", "\t"]),
    max_size=80).map("".join)


@pytest.mark.parametrize("max_len", [11, 16, 128])  # the default template is 10 tiny-tokenizer tokens
def test_prompt_ids_are_the_same_on_both_paths(tiny_model_dir, tmp_path_factory, max_len):
    torch_enc, onnx_enc = _encoders(tiny_model_dir, tmp_path_factory.mktemp("tok"), PromptConfig(), max_len)
    assert onnx_enc.label_ids == torch_enc.label_ids and onnx_enc.suffix_ids == torch_enc.suffix_ids

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(any_text, min_size=1, max_size=4))
    def check(batch):
        expected, got = torch_enc.encode(batch), onnx_enc.encode(batch)
        assert got.input_ids == expected.input_ids and got.truncated == expected.truncated

    check()


def test_add_special_tokens_applies_the_post_processor_like_transformers(tiny_model_dir, tmp_path):
    """A Llama-style tokenizer that prepends BOS: the adapter must add it exactly when transformers does."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    from rtsent.engines.onnx import JsonTokenizer
    from rtsent.artifacts.onnx_graph import write_tokenizer_json

    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    raw.add_special_tokens(["<s>"])
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|endoftext|>"}))
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    write_tokenizer_json(hf, tmp_path / "exported.json")
    ours = JsonTokenizer(tmp_path / "exported.json")
    texts = ["great movie", "", "dull <s> plot"]
    for special in (True, False):
        assert ours(texts, add_special_tokens=special)["input_ids"] == hf(texts, add_special_tokens=special)["input_ids"]
        assert ours(texts[0], add_special_tokens=special)["input_ids"] == hf(texts[0], add_special_tokens=special)["input_ids"]
    assert ours("great", add_special_tokens=True)["input_ids"][0] == bos
    ids = hf("great movie", add_special_tokens=False)["input_ids"]
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids[0]) == hf.convert_ids_to_tokens(ids[0])


REAL_DATA = os.environ.get("RTSENT_TEST_DATA")
REAL_TOKENIZER = os.environ.get("RTSENT_TEST_TOKENIZER")
real = pytest.mark.skipif(not (REAL_DATA and REAL_TOKENIZER),
                          reason="set RTSENT_TEST_DATA and RTSENT_TEST_TOKENIZER to compare on the real data")


@real
@pytest.mark.parametrize("template,words,max_len", [
    ("Review: {text}\nSentiment:", (" negative", " positive"), 128),  # the default
    ("{text}\nSentiment:", (" negative", " positive"), 24),  # cuts 39 % of RT reviews or more
    ("{text} Sentiment: ", ("neg", "pos"), 32),  # the seed recipe's prompt
])
def test_prompt_ids_are_the_same_on_all_rt_validation_texts(tmp_path, template, words, max_len):
    import pyarrow.parquet as pq

    prompt = PromptConfig(template=template, label_words=words)
    torch_enc, onnx_enc = _encoders(Path(REAL_TOKENIZER), tmp_path, prompt, max_len)
    texts = pq.read_table(Path(REAL_DATA) / "validation.parquet").column("text").to_pylist()
    expected, got = torch_enc.encode(texts), onnx_enc.encode(texts)
    assert len(texts) == 1066 and got.input_ids == expected.input_ids and got.truncated == expected.truncated
    assert onnx_enc.label_ids == torch_enc.label_ids
    if max_len == 24:
        assert sum(expected.truncated) > 400


@real
def test_real_tokenizer_on_generated_strings(tmp_path):
    torch_enc, onnx_enc = _encoders(Path(REAL_TOKENIZER), tmp_path, PromptConfig(), 16)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(any_text, min_size=1, max_size=4))
    def check(batch):
        assert onnx_enc.encode(batch).input_ids == torch_enc.encode(batch).input_ids

    check()


def test_predict_says_which_engine_it_picked_and_why(exported):
    auto = runner.invoke(app, ["predict", "great movie", "--model", str(exported)])
    fp32 = runner.invoke(app, ["predict", "great movie", "--model", str(exported), "--precision", "fp32"])
    assert auto.exit_code == 0 and fp32.exit_code == 0
    said = " ".join(auto.output.split())
    if json.loads((exported / "rtsent.json").read_text())["onnx"]["int8_check"]["accepted"]:
        assert "scoring with the onnx engine, int8: the int8 graph, validated at export" in said and "--precision fp32" in said
    else:
        assert "scoring with the onnx engine, fp32: a single start" in said and "not validated" in said
    assert "scoring with the onnx engine, fp32: a single start" in " ".join(fp32.output.split())
