"""The CLI through typer's CliRunner: help, the four commands end to end, output formats, exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rtsent.artifacts.prepared import find_prepared, load_prepared
from rtsent.cli import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.mark.parametrize("command", [[], ["prepare"], ["train"], ["evaluate"], ["predict"]])
def test_help_of_every_command(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_every_option_of_a_stage_comes_from_its_config():
    """No option is written by hand (besides --workdir): each is a config field, or a field of the prompt inside
    it, named in that config's Nested."""
    import dataclasses

    import typer.main

    from rtsent import config

    configs = {"prepare": config.PrepareConfig, "train": config.TrainConfig, "evaluate": config.EvaluateConfig,
               "predict": config.PredictConfig, "report": config.ReportConfig, "runs": config.RunsConfig,
               "export": config.ExportConfig, "push": config.PushConfig, "serve": config.ServeConfig}
    commands = typer.main.get_command(app).commands
    assert set(commands) == set(configs)
    for name, cls in configs.items():
        expected = ["workdir"]
        for f in dataclasses.fields(cls):
            nested = f.metadata.get("nested")
            expected += list(nested.options) if nested else [f.name] if f.metadata["cli"] else []
        assert sorted(p.name for p in commands[name].params) == sorted(expected), name
    prompts = {name: {p.name: p.help for p in commands[name].params if p.name in ("template", "label_words")}
               for name in ("prepare", "evaluate", "predict")}
    assert prompts["evaluate"]["template"] == "Zero-shot: " + config.TEMPLATE_HELP == "Zero-shot: " + prompts["prepare"]["template"]
    assert prompts["predict"]["label_words"] == "Zero-shot base model only: " + config.WORDS_HELP


def test_help_does_not_import_torch():
    code = "import sys; from rtsent.cli import app; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unknown_option_is_a_usage_error():
    result = invoke("train", "--learning-rate", "1")
    assert result.exit_code == 2 and "No such option" in result.output


def test_bad_option_value_is_one_line_exit_2(tmp_path):
    result = invoke("train", "--loss", "mse", "--workdir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "--loss must be one of" in result.output
    assert "Traceback" not in result.output


def test_no_prepared_data_is_a_runtime_error(tmp_path, tiny_model_dir):
    result = invoke("train", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "ws"))
    assert result.exit_code == 1 and "rtsent prepare" in result.output


def test_four_commands_end_to_end(tmp_path, tiny_model_dir, data_dir):
    ws = ["--workdir", str(tmp_path / "ws")]
    model = ["--model", str(tiny_model_dir)]
    first = invoke("prepare", "--data", str(data_dir), *model, "--max-len", "32", *ws)
    assert first.exit_code == 0, first.output
    again = invoke("prepare", "--data", str(data_dir), *model, "--max-len", "32", *ws)
    assert again.exit_code == 0 and "cached" in again.output
    trained = invoke("train", *model, "--lr", "1e-2", "--batch-size", "16", "--epochs", "6", "--eval-every", "16",
                     "--warmup", "0", "--precision", "fp32", "--run-name", "cli", *ws)
    assert trained.exit_code == 0, trained.output
    assert "best validation accuracy" in trained.output
    evaluated = invoke("evaluate", "--split", "test", *ws)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "ws/runs/cli/model/eval-test.json").read_text())
    assert report["split"] == "test" and report["accuracy"] >= 0.9
    predicted = invoke("predict", "a wonderful and charming story", *ws)
    assert predicted.exit_code == 0, predicted.output
    assert "positive" in predicted.output

    lines = invoke("predict", "--format", "jsonl", "a dull film", "a superb film", *ws)
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["negative", "positive"]

    table = invoke("predict", "--format", "csv", "-", *ws, input="a dull film\n\na superb film\n")
    parsed = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["label"], r["error"]) for r in parsed] == [("negative", ""), ("", "empty text"), ("positive", "")]

    as_json = invoke("predict", "--format", "json", "--file", str(data_dir / "test.parquet"), *ws)
    assert len(json.loads(as_json.stdout)) == 64


def test_seed_recipe_format_is_reproducible(tmp_path, tiny_model_dir, data_dir):
    from rtsent.core.modeling import load_tokenizer
    from rtsent.artifacts.workspace import Workspace

    result = invoke("prepare", "--data", str(data_dir), "--model", str(tiny_model_dir), "--template",
                    "{text} Sentiment: ", "--label-words", "neg,pos", "--workdir", str(tmp_path / "ws"))
    assert result.exit_code == 0, result.output
    path = find_prepared(Workspace.resolve(tmp_path / "ws"), None)
    loaded = load_prepared(path)
    dd, manifest = loaded.dataset, loaded.meta.to_dict()
    tok = load_tokenizer(str(tiny_model_dir))
    assert manifest["prompt"]["template"] == "{text} Sentiment: "
    assert [tok.decode([i]) for ((i,),) in manifest["label_words"]] == ["neg", "pos"]
    first = dd["train"][0]["input_ids"]
    text = "{text} Sentiment: ".replace("{text}", __import__("pyarrow.parquet").parquet.read_table(
        data_dir / "train.parquet").column("text")[0].as_py())
    assert first == tok(text, add_special_tokens=False)["input_ids"]


def test_predict_streams_csv_and_jsonl_like_plain_text(trained, tmp_path):
    space, result = trained
    texts = ["a dull and tedious plot", "a superb, wonderful film", 'a "quoted" boring story']
    (tmp_path / "r.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "r.csv").write_text("id,review\n" + "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}"\n'
                                                            for i, t in enumerate(texts)))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))
    outputs = {}
    for name in ("r.txt", "r.csv", "r.jsonl"):
        res = invoke("predict", "--file", str(tmp_path / name), "--text-column", "review",
                     "--model", str(result.model_dir), "--format", "jsonl")
        assert res.exit_code == 0, res.output
        outputs[name] = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["text"] for r in outputs["r.csv"]] == texts
    assert outputs["r.txt"] == outputs["r.csv"] == outputs["r.jsonl"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "fine"}\n{"text": "no review field"}\n')
    res = invoke("predict", "--file", str(bad), "--text-column", "review", "--model", str(result.model_dir))
    assert res.exit_code == 2 and "record 2 has no text field 'review'" in res.output
