"""Bad input gets one line, the right exit code (2: what the user gave is wrong, 1: runtime), no traceback,
and nothing written half. Run with `-s` to print every message (docs/reliability.md lists them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtsent.cli import app
from helpers import default_prompt

runner = CliRunner()
HEADER = "text,label\n"
GOOD = HEADER + "a great film,1\na dull film,0\n"


def fails(args: list[str], code: int, *expected: str, case: str = "", **kwargs) -> str:
    """Run the CLI, check it failed with `code` and exactly one error line containing `expected`."""
    result = runner.invoke(app, args, **kwargs)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:], result.output
    for text in expected:
        assert text in errors[0], (text, errors[0])
    print(f"\nBADINPUT | {case or ' '.join(args[:2])} | {errors[0]} | {code}")
    return errors[0]


def succeeds(args: list[str], **kwargs):
    result = runner.invoke(app, args, **kwargs)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 0, result.output
    return result


def data_folder(root: Path, train: str | bytes | None = GOOD, validation: str | bytes | None = GOOD,
                ext: str = "csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, content in (("train", train), ("validation", validation)):
        if content is not None:
            path = root / f"{split}.{ext}"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def prepare_args(data: Path, model: Path, ws: Path, *extra: str) -> list[str]:
    return ["prepare", "--data", str(data), "--model", str(model), "--workdir", str(ws), *extra]


def assert_nothing_prepared(ws: Path) -> None:
    assert not list((ws / "prepared").glob("*")) if (ws / "prepared").exists() else True
    assert not list((ws / ".tmp").glob("*")) if (ws / ".tmp").exists() else True


# --- prepare: data files ----------------------------------------------------------------------------

DATA_CASES = {
    "empty file": (dict(train=b""), "the file is empty"),
    "only empty/whitespace texts": (dict(train=HEADER + '"   ",0\n"\t",1\n'), "(train) has no rows with text"),
    "invalid UTF-8 bytes": (dict(train=b"text,label\n\xff\xfe broken,0\n"), "(train) row 0: the text is not valid UTF-8; re-save the file as UTF-8"),
    "missing text column": (dict(train="review,label\nfine,1\n"),
                            "has no text column 'text' (columns: review, label); pass --text-column"),
    "misnamed label column": (dict(train="text,sentiment\nfine,1\n"),
                              "has no label column 'label' (columns: text, sentiment); pass --label-column"),
    "label outside the label set": (dict(train=HEADER + "fine,5\n"), "label 5 is outside the class ids 0..1",
                                    "pass them as --label-names"),
    "negative label": (dict(train=HEADER + "fine,-1\n"), "label -1 is outside the class ids 0..1"),
    "non-integer label": (dict(train=HEADER + "fine,1.5\n"), "label 1.5 is not a whole number"),
    "NaN label (csv)": (dict(train=HEADER + "fine,NaN\n"), "label None is missing or not a class"),
    "empty label cell": (dict(train=HEADER + "fine,\nok,1\n"), "label None is missing or not a class"),
    "one string class": (dict(train=HEADER + "fine,meh\n"), "train's labels name one class ['meh']"),
    "empty label among named classes": (dict(train=HEADER + "great,good\nawful,bad\nfine,\n"),
                                        "(train) row 2: label '' is empty; fill it in or drop the row"),
    "a class the names lack": (dict(train=HEADER + "great,good\nawful,bad\n", validation=HEADER + "fine,goodish\n"),
                               "(validation) row 0: label 'goodish' is not one of the label names ['bad', 'good']"),
    "missing train split": (dict(train=None), "has no train split (found: ['validation'])"),
    "malformed jsonl": (dict(train='{"text": "a", "label": 1}\n{not json\n', validation='{"text": "a", "label": 1}\n',
                             ext="jsonl"), "cannot read"),
    "non-string text": (dict(train='{"text": 123, "label": 1}\n', validation='{"text": "a", "label": 1}\n', ext="jsonl"),
                        "text 123 is not a string; check --text-column"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_files(tmp_path, tiny_model_dir, case):
    files, *expected = DATA_CASES[case]
    data = data_folder(tmp_path / "data", **files)
    fails(prepare_args(data, tiny_model_dir, tmp_path / "ws"), 2, *expected, case=case)
    assert_nothing_prepared(tmp_path / "ws")


def test_several_files_for_one_split(tmp_path, tiny_model_dir):
    data = data_folder(tmp_path / "data")
    (data / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
    fails(prepare_args(data, tiny_model_dir, tmp_path / "ws"), 2, "several files for split 'train'",
          case="two files for one split")


def test_blank_texts_are_skipped_and_counted(tmp_path, tiny_model_dir):
    data = data_folder(tmp_path / "data", train=GOOD + '"",0\n"  ",1\n\n')
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    train = json.loads(manifest.read_text())["splits"]["train"]
    assert (train["rows"], train["skipped_empty"]) == (2, 2)


@pytest.mark.parametrize("train, validation", [
    ("great,Positive\nawful,NEGATIVE\n", "fine,positive \n"),        # case, and spaces around
    ("great,pos\nawful,neg\n", "fine, Pos\n"),                        # IMDB's and the hub RT's abbreviations
], ids=["case-and-spaces", "abbreviations"])
def test_labels_spelled_otherwise_are_their_class(tmp_path, tiny_model_dir, train, validation):
    """Labels that name negative/positive in another spelling get the default classes, and each row its class."""
    data = data_folder(tmp_path / "data", train=HEADER + train, validation=HEADER + validation)
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    splits = json.loads(manifest.read_text())["splits"]
    assert splits["train"]["per_class"] == {"negative": 1, "positive": 1}
    assert splits["validation"]["per_class"] == {"negative": 0, "positive": 1}


def test_data_named_classes_ignore_the_spaces_around_a_label(tmp_path, tiny_model_dir):
    data = data_folder(tmp_path / "data", train=HEADER + "a,good\nb,bad\nc,good \nd, bad\n",
                       validation=HEADER + "e,good\nf,bad\n")
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    meta = json.loads(manifest.read_text())
    assert meta["splits"]["train"]["per_class"] == {"bad": 2, "good": 2}


def test_star_ratings_match_numeric_label_names(tmp_path, tiny_model_dir):
    """Integer labels 1-5 (read as numbers from a csv) match --label-names 1..5 by value, not as ids 0..4."""
    rows = "".join(f"r{i},{i % 5 + 1}\n" for i in range(10))
    data = data_folder(tmp_path / "data", train=HEADER + rows, validation=HEADER + rows)
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws", "--label-names", "5,4,3,2,1"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["splits"]["train"]["per_class"] == {n: 2 for n in "54321"}
    from rtsent.sources.data import label_id

    assert [label_id(v, ["5", "4", "3", "2", "1"], "x") for v in (5, 1, 3.0, "2", "4.0")] == [0, 4, 2, 3, 1]


def test_string_labels_and_digit_strings_are_accepted(tmp_path, tiny_model_dir):
    data = data_folder(tmp_path / "data", train='{"text": "a", "label": "positive"}\n{"text": "b", "label": "0"}\n',
                       validation='{"text": "a", "label": "negative"}\n', ext="jsonl")
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["splits"]["train"]["per_class"] == {"negative": 1, "positive": 1}


def test_huge_review_and_unusual_characters_are_prepared(tmp_path, tiny_model_dir):
    import csv

    data = tmp_path / "data"
    data.mkdir()
    rows = [("great " * 175_000, 1), ("dull\x00\x07\x1b[31m film", 0), ("😀 great 🎬", 1), ("فيلم رائع great", 1),
            ("\u202egreat\u202c film", 1)]
    for split in ("train", "validation"):
        with open(data / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("text", "label"), *rows])
    succeeds(prepare_args(data, tiny_model_dir, tmp_path / "ws", "--max-len", "32"))
    (manifest,) = (tmp_path / "ws" / "prepared").glob("*/manifest.json")
    train = json.loads(manifest.read_text())["splits"]["train"]
    assert train["rows"] == 5 and train["truncated"] >= 1 and train["length"]["max"] <= 32


# --- prepare: options and workspace -----------------------------------------------------------------


@pytest.mark.parametrize("case, extra, code, expected", [
    ("--max-len smaller than the template", ["--max-len", "3"], 2, "--max-len 3 leaves no room for the review"),
    ("--max-len below 2", ["--max-len", "1"], 2, "--max-len must be at least 2, got 1"),
    ("template without {text}", ["--template", "Sentiment:"], 2, "--template must contain {text} exactly once"),
    ("label word too long for --max-len", ["--label-words", " dreadfulness, positive", "--max-len", "8"], 2,
     "' dreadfulness' is 9 tokens, more than --max-len 8 leaves after the template"),
    ("repeated label word", ["--label-words", " positive, positive"], 2, "--label-words repeats a word"),
    ("unknown option", ["--colour", "red"], 2, "No such option: --colour"),
    ("option of the wrong type", ["--max-len", "ten"], 2, "Invalid value for '--max-len'"),
])
def test_bad_prepare_options(tmp_path, tiny_model_dir, data_dir, case, extra, code, expected):
    fails(prepare_args(data_dir, tiny_model_dir, tmp_path / "ws", *extra), code, expected, case=case)
    assert_nothing_prepared(tmp_path / "ws")


def test_nan_label_in_parquet(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = data_folder(tmp_path / "data", train=None)
    pq.write_table(pa.table({"text": ["fine", "ok"], "label": [1.0, float("nan")]}), data / "train.parquet")
    fails(prepare_args(data, tiny_model_dir, tmp_path / "ws"), 2, "row 1: label nan is missing or not a class",
          case="NaN label (parquet)")


def test_data_path_that_is_missing_or_a_file(tmp_path, tiny_model_dir):
    fails(prepare_args(tmp_path / "nope", tiny_model_dir, tmp_path / "ws"), 2, "no such folder", case="--data missing")
    (tmp_path / "f.csv").write_text(GOOD)
    fails(prepare_args(tmp_path / "f.csv", tiny_model_dir, tmp_path / "ws"), 2, "is a file; pass a folder",
          case="--data is a file")


def test_workdir_that_is_a_file(tmp_path, tiny_model_dir, data_dir):
    (tmp_path / "ws").write_text("not a folder")
    fails(prepare_args(data_dir, tiny_model_dir, tmp_path / "ws"), 2, f"workspace {tmp_path / 'ws'} is a file",
          case="--workdir is a file")


def test_read_only_workspace(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    ws = tmp_path / "ws"
    for sub in ("prepared", "runs", ".tmp", ".locks"):
        (ws / sub).mkdir(parents=True)
    ws.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permissions: make access() answer as for a normal user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ws else real(p, mode, **kw))
    try:
        fails(prepare_args(data_dir, tiny_model_dir, ws), 1, f"workspace {ws} is read-only; pass --workdir",
              case="read-only workspace")
    finally:
        ws.chmod(0o755)


# --- train ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_ws(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    ws = tmp_path_factory.mktemp("bad-input-ws")
    succeeds(prepare_args(data_dir, tiny_model_dir, ws, "--max-len", "32"))
    return ws


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with two vocabulary ids swapped: a different tokenizer of the same size."""
    folder = tmp_path_factory.mktemp("other-tok") / "model"
    shutil.copytree(tiny_model_dir, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_prepared_data_made_with_another_tokenizer(prepared_ws, other_tokenizer_model, tiny_model_dir):
    fails(["train", "--model", str(other_tokenizer_model), "--workdir", str(prepared_ws)], 1,
          f"was tokenized for {tiny_model_dir}", f"run `rtsent prepare --model {other_tokenizer_model}`",
          case="prepared data from another tokenizer")


@pytest.mark.parametrize("case, args, code, expected", [
    ("--prepared that does not exist", ["--prepared", "0123abcd"], 1, "no prepared dataset at 0123abcd"),
    ("--run-name with a path", ["--run-name", "../x"], 2, "--run-name may use letters, digits"),
    ("--resume with no run", ["--resume", "--run-name", "ghost"], 1, "no run 'ghost' in"),
    ("--save-every not a multiple of --eval-every", ["--eval-every", "2", "--save-every", "3"], 2,
     "--save-every (3) must be a multiple of --eval-every (2)"),
    ("negative learning rate", ["--lr", "-1"], 2, "--lr must be positive"),
    ("--model folder that does not exist", ["--model", "./no-such-model"], 2, "no such folder: ./no-such-model"),
])
def test_bad_train_options(prepared_ws, tiny_model_dir, case, args, code, expected):
    base = ["train", "--model", str(tiny_model_dir), "--workdir", str(prepared_ws)]
    fails(base + args, code, expected, case=case)


# --- predict / evaluate -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(trained) -> Path:
    return trained[1].model_dir


def damaged_copy(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    return folder


def test_model_folder_without_rtsent_json(tiny_model_dir):
    fails(["predict", "fine", "--model", str(tiny_model_dir)], 1, "has no rtsent.json, so it was not exported",
          case="model folder without rtsent.json")


@pytest.mark.parametrize("case, damage, expected", [
    ("truncated weights", lambda f: f.joinpath("model.safetensors").write_bytes(
        f.joinpath("model.safetensors").read_bytes()[:1000]), "are unreadable"),
    ("missing weights", lambda f: f.joinpath("model.safetensors").unlink(), "cannot load the model from"),
    ("truncated rtsent.json", lambda f: f.joinpath("rtsent.json").write_text('{"prompt": {"templ'),
     "rtsent.json is unreadable or incomplete"),
    ("rtsent.json without a prompt", lambda f: f.joinpath("rtsent.json").write_text("{}"),
     "rtsent.json has no valid prompt"),
])
def test_damaged_model_folder(model_dir, tmp_path, case, damage, expected):
    folder = damaged_copy(model_dir, tmp_path)
    damage(folder)
    line = fails(["predict", "fine", "--model", str(folder), "--engine", "torch"], 1, expected, case=case)
    assert str(folder) in line


@pytest.mark.parametrize("case, texts, expected", [
    ("empty argument", [""], "text 1 is empty"),
    ("whitespace-only argument", ["fine", " \t "], "text 2 is empty"),
    ("argument with undecodable bytes", ["bad \udcff bytes"], "text 1 is not valid UTF-8"),
    ("no texts at all", [], "give texts as arguments, or --file PATH"),
])
def test_bad_predict_arguments(model_dir, case, texts, expected):
    fails(["predict", *texts, "--model", str(model_dir)], 2, expected, case=case)


@pytest.mark.parametrize("case, name, content, code, expected", [
    ("empty --file", "empty.txt", b"", 2, "has no reviews (it is empty)"),
    ("--file with invalid UTF-8", "bad.txt", b"fine\n\xff\xfe\n", 2, "line 2 is not valid UTF-8"),
    ("--file csv without the text column", "x.csv", b"review\nfine\n", 2, "has no text column 'text'"),
    ("--file that does not exist", None, None, 2, "no such file"),
])
def test_bad_predict_files(model_dir, tmp_path, case, name, content, code, expected):
    path = tmp_path / (name or "missing.txt")
    if content is not None:
        path.write_bytes(content)
    fails(["predict", "--file", str(path), "--model", str(model_dir)], code, expected, case=case)


def test_file_of_blank_lines_gives_one_unlabelled_row_per_line(model_dir, tmp_path):
    path = tmp_path / "blank.txt"
    path.write_bytes(b"\n  \n\n")
    result = succeeds(["predict", "--file", str(path), "--model", str(model_dir)])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["text"], r["label"], r["error"]) for r in rows] == [("", None, "empty text"), ("  ", None, "empty text"),
                                                                    ("", None, "empty text")]


def test_bad_stdin(model_dir):
    fails(["predict", "-", "--model", str(model_dir)], 2, "<stdin> line 1 is not valid UTF-8", input=b"\xff\n",
          case="stdin with invalid UTF-8")
    fails(["predict", "-", "--model", str(model_dir)], 2, "stdin has no reviews", input=b"", case="empty stdin")


def test_predict_max_len_smaller_than_the_template(model_dir):
    fails(["predict", "fine", "--model", str(model_dir), "--max-len", "2"], 2, "--max-len 2 leaves no room",
          case="predict --max-len smaller than the template")


def test_unusual_but_valid_texts_are_classified(model_dir):
    texts = ["great " * 175_000, "dull\x00\x07\x1b[31m film", "😀 great 🎬", "فيلم رائع great", "\u202egreat\u202c"]
    result = succeeds(["predict", *texts, "--model", str(model_dir), "--format", "jsonl", "--precision", "fp32"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    from conftest import reference_probabilities

    short = rows[1:]  # the first is cut to max-len; the others fit whole
    expected = reference_probabilities(model_dir, [default_prompt(r["text"]) for r in short])
    for row, probs in zip(short, expected):
        assert [row["probabilities"]["negative"], row["probabilities"]["positive"]] == pytest.approx(probs, abs=1e-4)
    table = succeeds(["predict", texts[1], "--model", str(model_dir)])
    assert "\x1b" not in table.stdout and "\\x1b[31m" in table.stdout  # a review never drives the terminal


def test_evaluate_with_data_prepared_for_another_prompt(model_dir, tmp_path, tiny_model_dir, data_dir):
    ws = tmp_path / "ws"
    succeeds(prepare_args(data_dir, tiny_model_dir, ws, "--template", "Review: {text}\\nMood:"))
    (folder,) = (ws / "prepared").iterdir()
    fails(["evaluate", "--model", str(model_dir), "--prepared", str(folder), "--workdir", str(ws)], 1,
          "was made with another tokenizer or prompt", "run `rtsent prepare --model",
          case="evaluate on data prepared with another template")


def test_evaluate_split_that_was_not_prepared(model_dir, tmp_path, tiny_model_dir):
    data = data_folder(tmp_path / "data")
    ws = tmp_path / "ws"
    succeeds(prepare_args(data, tiny_model_dir, ws))
    (folder,) = (ws / "prepared").iterdir()
    fails(["evaluate", "--model", str(model_dir), "--prepared", str(folder), "--split", "test", "--workdir", str(ws),
           "--output", str(tmp_path / "r.json")], 1, "has no test split", case="evaluate --split test without test data")
    assert not (tmp_path / "r.json").exists()
    fails(["evaluate", "--split", "dev", "--workdir", str(ws)], 2, "--split must be one of", case="unknown --split")


def test_the_onnx_engine_on_a_model_without_a_graph_says_what_to_do(trained, tiny_model_dir, tmp_path):
    from rtsent.artifacts.model import ModelMeta

    base = fails(["predict", "fine", "--model", str(tiny_model_dir), "--template", "{text}\\nSentiment:",
                  "--engine", "onnx", "--workdir", str(tmp_path / "ws")], 1, "is a base model", "--engine torch",
                 case="--engine onnx on a base model")
    assert "rtsent export" not in base.replace("`rtsent train`", "")
    folder = tmp_path / "model"
    shutil.copytree(trained[1].model_dir, folder)
    ModelMeta.read(folder).replace(onnx=None).write(folder)
    for name in ("model.onnx", "model.int8.onnx"):
        (folder / name).unlink(missing_ok=True)
    line = fails(["predict", "fine", "--model", str(folder), "--engine", "onnx", "--precision", "fp32",
                  "--workdir", str(tmp_path / "ws")], 1, "has no ONNX graph; run `rtsent export", case="--engine onnx, no graph")
    assert "no an " not in line
