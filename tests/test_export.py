"""The exported folder: same architecture as its base, fp32 training, loads anywhere, a model card, push.

Also the model's context against --max-len at prepare, train and predict.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_splits
from rtsent import evaluate, predict, prepare, train
from rtsent.cli import app
from rtsent.config import EvaluateConfig, PredictConfig, PrepareConfig, TrainConfig
from rtsent.errors import UsageError
from rtsent.artifacts.workspace import Workspace

runner = CliRunner()
IGNORED_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "pad_token_id"}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("export-data"), sizes=(64, 32, 32))


def _short_run(ws: Workspace, model: Path, data: Path, **kw) -> train.TrainResult:
    prepare.run(PrepareConfig(data=str(data), model=str(model), max_len=32), ws)
    cfg = dict(model=str(model), lr=5e-3, batch_size=16, max_steps=2, eval_every=2, precision="fp32", warmup=0.0,
               run_name="r")
    return train.run(TrainConfig(**{**cfg, **kw}), ws)


def _config(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in IGNORED_CONFIG_KEYS}


def _safetensors_dtypes(folder: Path) -> set[str]:
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


# --- issue 7, item 5: the export describes the base model's architecture ----------------------------------


def test_bf16_training_exports_the_base_activation_and_dropout(tmp_path, tiny_model_dir, small_data):
    base = _config(tiny_model_dir)
    assert base["activation_function"] == "gelu_new" and base["resid_pdrop"] == 0.1
    result = _short_run(Workspace.resolve(tmp_path / "ws"), tiny_model_dir, small_data, precision="bf16", dropout=0.0)
    assert _config(result.model_dir) == base  # trained with exact GELU and no dropout: a run-time choice only


# --- issue 7, item 6: fp32 master weights whatever the stored dtype -------------------------------------------


def test_a_model_stored_in_bf16_trains_with_fp32_master_weights(tmp_path, tiny_model_dir, small_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stored = tmp_path / "bf16-model"
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).save_pretrained(str(stored))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(stored))
    assert _safetensors_dtypes(stored) == {"BF16"}
    result = _short_run(Workspace.resolve(tmp_path / "ws"), stored, small_data, precision="fp32")
    assert _safetensors_dtypes(result.model_dir) == {"F32"}  # the optimizer updated fp32 weights


# --- issue 7, item 8: --max-len above the model's context -----------------------------------------------------


def test_prepare_refuses_a_max_len_longer_than_the_context(ws, tiny_model_dir, small_data):
    with pytest.raises(UsageError, match=r"max-len 200 is longer than the context .*n_positions=128.*--max-len 128"):
        prepare.run(PrepareConfig(data=str(small_data), model=str(tiny_model_dir), max_len=200), ws)


def test_train_refuses_prepared_data_longer_than_the_models_context(ws, tiny_model_dir, small_data):
    prepare.run(PrepareConfig(data=str(small_data), model=str(tiny_model_dir), max_len=64), ws)
    cfg = TrainConfig(model=str(tiny_model_dir), from_scratch=True, config_overrides="n_positions=32", max_steps=1,
                      precision="fp32")
    with pytest.raises(UsageError, match=r"max-len 64 is longer than the context .*n_positions=32.*rtsent prepare"):
        train.run(cfg, ws)


def test_predict_refuses_a_max_len_longer_than_the_context(trained):
    ws, result = trained
    cfg = PredictConfig(model=str(result.model_dir), texts=("fine",), max_len=500, precision="fp32")
    with pytest.raises(UsageError, match=r"max-len 500 is longer than the context .*n_positions=128"):
        predict.run(cfg, ws, out=io.StringIO())


def test_cli_says_it_in_one_line_with_exit_code_2(tmp_path, tiny_model_dir, small_data):
    out = runner.invoke(app, ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir), "--max-len", "129",
                              "--workdir", str(tmp_path / "ws")])
    assert out.exit_code == 2 and "context" in out.output and "Traceback" not in out.output


# --- a folder that loads anywhere -------------------------------------------------------------------------------


def test_exported_model_generates_its_label_word_with_a_plain_transformers_pipeline(trained):
    from transformers import pipeline

    from rtsent.engines import open_classifier

    ws, result = trained
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    template, words = meta["prompt"]["template"], meta["prompt"]["label_words"]
    texts = ["a brilliant and charming film", "the plot is dull and tedious", "superb actors, moving story",
             "a bland, lifeless movie", "it is clumsy and boring"]
    generator = pipeline("text-generation", model=str(result.model_dir), device="cpu")
    outputs = [generator(template.format(text=t), max_new_tokens=1, do_sample=False, return_full_text=False)[0]
               ["generated_text"] for t in texts]
    assert set(outputs) <= set(words)  # the greedy next token is a label word
    clf = open_classifier(str(result.model_dir), precision="fp32")
    ours = [clf.label_names[i] for i in clf.probabilities(texts).argmax(1)]
    assert [words.index(o) for o in outputs] == [clf.label_names.index(n) for n in ours]


# --- model card ------------------------------------------------------------------------------------------------


def test_model_card_has_valid_metadata_and_evaluate_adds_the_test_metrics(tmp_path, trained):
    from huggingface_hub import ModelCard

    src_ws, result = trained
    shutil.copytree(src_ws.root, tmp_path / "ws", ignore=shutil.ignore_patterns("eval-*.json", ".locks"))
    ws = Workspace.resolve(tmp_path / "ws")
    folder = ws.run(result.run.name).model
    card = ModelCard.load(folder / "README.md")
    meta = json.loads((folder / "rtsent.json").read_text())
    assert card.data.rtsent["template"] == meta["prompt"]["template"]
    assert card.data.rtsent["label_words"] == [" negative", " positive"]
    assert card.data.rtsent["train"]["lr"] == 1e-2 and card.data.pipeline_tag == "text-generation"
    assert [(r.dataset_split, r.metric_type) for r in card.data.eval_results] == [("validation", "accuracy")]
    assert card.data.eval_results[0].metric_value == pytest.approx(result.best_accuracy, abs=1e-4)

    report = evaluate.run(EvaluateConfig(split="test", precision="fp32"), ws)
    assert Path(report["written_to"]).parent == folder
    card = ModelCard.load(folder / "README.md")
    test = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_split == "test"}
    saved = json.loads((folder / "eval-test.json").read_text())
    assert test == {"accuracy": pytest.approx(saved["accuracy"], abs=1e-4), "f1": pytest.approx(saved["macro_f1"], abs=1e-4)}
    assert "| test | Test accuracy |" in card.text


def test_model_card_names_hub_base_models_and_datasets(tmp_path):
    from huggingface_hub import ModelCard

    from rtsent.artifacts import card

    (tmp_path / "rtsent.json").write_text(json.dumps({
        "prompt": {"template": "{text}\nSentiment:", "label_words": [" negative", " positive"],
                   "label_names": ["negative", "positive"]},
        "label_ids": [4633, 3967], "max_len": 128, "data": "rotten_tomatoes", "run": "r1",
        "train": {"model": "gpt2", "lora_r": 8}, "best": {"validation_accuracy": 0.8}}))
    (tmp_path / "eval-test.json").write_text(json.dumps({"accuracy": 0.75, "macro_f1": 0.7}))
    data = ModelCard.load(card.write(tmp_path)).data
    assert (data.base_model, data.datasets) == ("gpt2", ["rotten_tomatoes"])
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("validation", "accuracy"): 0.8, ("test", "accuracy"): 0.75, ("test", "f1"): 0.7}
    assert {r.dataset_type for r in data.eval_results} == {"rotten_tomatoes"}


# --- push ----------------------------------------------------------------------------------------------------------


class FakeApi:
    calls: list = []
    fail: Exception | None = None

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        if FakeApi.fail is not None:
            raise FakeApi.fail
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
        FakeApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_creates_the_repo_and_uploads_the_exported_folder(trained, fake_hub):
    ws, result = trained
    out = runner.invoke(app, ["push", result.run.name, "--repo-id", "me/tiny", "--private", "--workdir", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "https://huggingface.co/me/tiny" in out.output
    (create, upload) = fake_hub.calls
    assert create == ("create_repo", "me/tiny", True, True)
    assert upload[1] == "me/tiny"
    assert {"README.md", "config.json", "model.safetensors", "rtsent.json", "tokenizer_config.json"} <= set(upload[2])


def _http_error(status: int):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError("denied", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("make_error, code, message", [
    (lambda: _http_error(401), 1, "log in with `hf auth login` or set HF_TOKEN"),
    (lambda: _http_error(500), 1, "could not take me/tiny"),
    (lambda: __import__("huggingface_hub.errors").errors.HFValidationError("bad name"), 2, "not a valid repository name"),
    (lambda: ConnectionError("no route to host"), 1, "cannot reach the Hugging Face hub"),
])
def test_push_failures_are_one_line(trained, fake_hub, make_error, code, message):
    ws, result = trained
    fake_hub.fail = make_error()
    out = runner.invoke(app, ["push", result.run.name, "--repo-id", "me/tiny", "--workdir", str(ws.root)])
    assert out.exit_code == code and message in out.output and "Traceback" not in out.output
    assert len([line for line in out.output.splitlines() if line.startswith("error")]) == 1


def test_push_of_an_unknown_run_names_the_fix(ws, fake_hub):
    out = runner.invoke(app, ["push", "nope", "--repo-id", "me/tiny", "--workdir", str(ws.root)])
    assert out.exit_code == 1 and "rtsent train" in out.output and fake_hub.calls == []


def test_push_uploads_no_mistakes_review_texts_or_local_paths(trained, tmp_path, monkeypatch):
    import huggingface_hub

    space, _ = trained
    root = tmp_path / "ws"
    shutil.copytree(space.root, root)
    folder = root / "runs" / "tiny" / "model"
    data = tmp_path / "private.csv"  # labels flipped: every confident answer is a "mistake"
    data.write_text("text,label\n" + "".join(f"secret review {i} brilliant wonderful,0\nsecret {i} dull boring,1\n"
                                               for i in range(5)))
    for extra in (["--split", "test"], ["--data", str(data)]):
        out = runner.invoke(app, ["evaluate", "--model", str(folder), "--errors", "3", "--precision", "fp32",
                                  "--workdir", str(root), *extra])
        assert out.exit_code == 0, out.output
    errors = folder / "eval-data-private-errors.jsonl"
    mistakes = [json.loads(line)["text"] for line in errors.read_text().splitlines()]
    assert mistakes and str(root) in (folder / "eval-data-private.json").read_text()
    uploaded = {}

    class Api:
        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
            for p in Path(folder_path).rglob("*"):
                if p.is_file():
                    uploaded[str(p.relative_to(folder_path))] = p.read_bytes()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    out = runner.invoke(app, ["push", "tiny", "--repo-id", "me/tiny", "--workdir", str(root)])
    assert out.exit_code == 0, out.output
    assert {"model.safetensors", "rtsent.json", "README.md", "eval-test.json", "eval-data-private.json",
            "config.json"} <= set(uploaded)
    assert uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert not [name for name in uploaded if name.endswith("errors.jsonl")]
    for name, blob in uploaded.items():
        assert str(tmp_path).encode() not in blob, name  # no absolute local path (the workspace, the data)
        assert str(trained[1].model_dir.parent.parent.parent).encode() not in blob, name
        if not name.endswith((".safetensors", ".onnx", ".png")):
            assert not [t for t in mistakes if json.dumps(t)[1:-1].encode() in blob], name
    report = json.loads(uploaded["eval-test.json"])
    assert report["accuracy"] == json.loads((folder / "eval-test.json").read_text())["accuracy"]
    assert "| test | Test accuracy |" in uploaded["README.md"].decode()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the folder is unchanged
    assert not list((root / ".tmp").iterdir())
