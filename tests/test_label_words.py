"""Label words as users have them: any number of tokens, several words per class, classes named by the data.

References are independent of rtsent's scoring: the tokenizer's own encoding of prompt + word, and the
model's own full forward of prompt + word, its log-probabilities summed token by token by hand.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from conftest import NEGATIVE, NEUTRAL, POSITIVE
from rtsent import prepare, train
from rtsent.cli import app
from rtsent.config import PrepareConfig, PromptConfig, TrainConfig
from rtsent.core import label_scores
from rtsent.core.modeling import load_model, load_tokenizer, pad_batch
from rtsent.core.prompts import LabelWords, PromptEncoder

runner = CliRunner()
TEMPLATE = "{text}\nSentiment:"
# Two words that share their first token (a trie node scored once for both), a verbalizer of two words, and
# words of one token beside them.
WORDS = (" very negative| awful", " negative", " neutral", " positive", " very positive| great film")
TEXTS = ["the movie is dull and bland", "a charming story with brilliant actors and a plot", "it"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """A tiny GPT-2 (byte-level BPE) and a tiny Llama (SentencePiece-style "▁" words, <s> BOS), random weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from test_families import _config, _sentencepiece_tokenizer

    root = tmp_path_factory.mktemp("label-words")
    out = {}
    for i, (family, tokdir) in enumerate((("gpt2", tokenizer_dir), ("llama", _sentencepiece_tokenizer(root / "sp")))):
        tok = AutoTokenizer.from_pretrained(str(tokdir))
        torch.manual_seed(i)
        folder = root / family
        AutoModelForCausalLM.from_config(_config(family, len(tok), tok)).save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        out[family] = folder
    return out


def by_hand(model, rows, words: LabelWords) -> np.ndarray:
    """log P(class | prompt) from the model's own forward of prompt + word, one word at a time: the sum of
    the word's tokens' log-probabilities, a class's several words combined as the log of their summed
    probabilities."""
    out = []
    with torch.no_grad():
        for row in rows:
            classes = []
            for class_words in words.classes:
                logps = []
                for word in class_words:
                    logits = model(torch.tensor([list(row) + list(word)])).logits[0].double()
                    logp = torch.log_softmax(logits, -1)
                    logps.append(sum(logp[len(row) - 1 + j, t].item() for j, t in enumerate(word)))
                classes.append(np.logaddexp.reduce(logps))
            out.append(classes)
    return np.array(out)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# After a template ending in a newline a SentencePiece tokenizer starts the word without its "▁", which it
# puts before the same word alone.
CASES = {"gpt2": (TEMPLATE, WORDS), "llama": ("{text}\nSentiment:\n", tuple(w.replace(" ", "", 1).replace("| ", "|")
                                                                            for w in WORDS))}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_class_scores_are_the_models_own_log_probabilities_of_the_words(folders, family, attn):
    tok = load_tokenizer(str(folders[family]))
    template, entries = CASES[family]
    encoder = PromptEncoder(PromptConfig(template=template, label_words=entries), tok, 64)
    words = encoder.label_words
    # The words' tokens are those the tokenizer gives them after a whole prompt ...
    prompt = template.format(text=TEXTS[0])
    whole = tok(prompt)["input_ids"]
    for entry, class_words in zip(entries, words.classes):
        for word, ids in zip(entry.split("|"), class_words):
            assert list(ids) == tok(prompt + word)["input_ids"][len(whole):]
    assert words.head_ids is None and max(len(w) for w in words.words) > 1
    if family == "llama":  # ... which is not how SentencePiece splits the word alone
        alone = tok("very negative", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(alone)[0].startswith("▁") and alone != list(words.classes[0][0])
    model = load_model(str(folders[family]), attn=attn).eval()
    rows = encoder.encode(TEXTS).input_ids
    layout = label_scores.ScoringLayout(words)
    with torch.no_grad():
        ours = label_scores.scores(model, layout, **pad_batch(rows, tok.pad_token_id)).double().numpy()
    reference = by_hand(model, rows, words)
    # The class scores leave out the first token's normalizer, one constant per review: the same softmax.
    np.testing.assert_allclose(ours - ours[:, :1], reference - reference[:, :1], atol=2e-5)
    np.testing.assert_allclose(softmax(ours), softmax(reference), atol=1e-5)


def test_k_classes_cost_one_forward_with_one_token_per_distinct_word_prefix(folders):
    tok = load_tokenizer(str(folders["gpt2"]))
    encoder = PromptEncoder(PromptConfig(template=TEMPLATE, label_words=WORDS), tok, 64)
    model = load_model(str(folders["gpt2"])).eval()
    seen = []
    model.base_model.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    rows = encoder.encode(TEXTS).input_ids
    batch = pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        label_scores.scores(model, label_scores.ScoringLayout(encoder.label_words), **batch)
    prefixes = {w[:d] for w in encoder.label_words.words for d in range(1, len(w))}
    # " very" is fed once for " very negative" and " very positive".
    assert len(prefixes) < sum(len(w) - 1 for w in encoder.label_words.words)
    assert seen == [(len(rows), batch["input_ids"].shape[1] + len(prefixes))]
    # One single-token word per class: the prompt alone, as before.
    seen.clear()
    single = PromptEncoder(PromptConfig(template=TEMPLATE), tok, 64)
    with torch.no_grad():
        label_scores.scores(model, label_scores.ScoringLayout(single.label_words), **batch)
    assert seen == [tuple(batch["input_ids"].shape)]


@pytest.mark.parametrize("kind", ["label", "lm"])
def test_the_training_loss_is_the_cross_entropy_of_the_words_by_hand(folders, kind):
    tok = load_tokenizer(str(folders["llama"]))
    encoder = PromptEncoder(PromptConfig(template=TEMPLATE, label_words=WORDS), tok, 64)
    model = load_model(str(folders["llama"])).eval()
    rows = encoder.encode(TEXTS).input_ids
    labels = torch.tensor([0, 4, 2])
    layout = label_scores.ScoringLayout(encoder.label_words)
    with torch.no_grad():
        loss, scores = label_scores.loss_and_scores(model, layout, {**pad_batch(rows, tok.pad_token_id),
                                                                    "labels": labels}, kind)
    reference = by_hand(model, rows, encoder.label_words)  # log P(class words | prompt) over the whole vocabulary
    if kind == "lm":
        expected = -reference[np.arange(3), labels.numpy()].mean()
    else:
        expected = -np.log(softmax(reference)[np.arange(3), labels.numpy()]).mean()
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(softmax(scores.double().numpy()), softmax(reference), atol=1e-5)


# --- the whole pipeline with the data's own class names ------------------------------------------------

NAMES = ["very negative", "neutral", "very positive"]


def named_split(n: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    labels = [NAMES[i % 3] for i in range(n)]
    texts = []
    for name in labels:
        pool = NEGATIVE if "negative" in name else POSITIVE if "positive" in name else NEUTRAL
        words = rng.choices(NEUTRAL, k=rng.randint(3, 6)) + rng.choices(pool, k=2)
        rng.shuffle(words)
        texts.append(" ".join(words))
    return {"text": texts, "label": labels}


@pytest.fixture(scope="module")
def named_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("named-data")
    for split, n, seed in (("train", 96, 1), ("validation", 48, 2), ("test", 48, 3)):
        pq.write_table(pa.table(named_split(n, seed)), folder / f"{split}.parquet")
    return folder


@pytest.fixture(scope="module")
def named_run(tmp_path_factory, folders, named_data):
    from rtsent.artifacts.workspace import Workspace

    space = Workspace.resolve(tmp_path_factory.mktemp("named-ws"))
    prepared = prepare.run(PrepareConfig(data=str(named_data), model=str(folders["gpt2"]), max_len=32), space)
    result = train.run(TrainConfig(model=str(folders["gpt2"]), lr=1e-2, batch_size=16, epochs=3, run_name="named",
                                   precision="fp32", warmup=0.0), space)
    return space, prepared, result


def test_string_labels_become_the_classes_and_their_words(named_run, folders):
    _, prepared, _ = named_run
    prompt = prepared.meta.to_dict()["prompt"]
    assert prompt["label_names"] == sorted(NAMES)  # the data's names, sorted, as written
    assert prompt["label_words"] == [" " + n for n in sorted(NAMES)]  # after "Sentiment:" a word needs its space
    tok = load_tokenizer(str(folders["gpt2"]))
    words = LabelWords.from_list(prepared.meta.label_words.to_list())
    assert [len(w[0]) for w in words.classes] == [len(tok(" " + n)["input_ids"]) for n in sorted(NAMES)]
    assert max(len(w[0]) for w in words.classes) > 1


def test_every_engine_scores_words_of_several_tokens_alike(named_run):
    from rtsent.engines import open_classifier

    _, _, result = named_run
    texts = named_split(12, 9)["text"]
    torch_clf = open_classifier(str(result.model_dir), engine="torch", precision="fp32")
    onnx_clf = open_classifier(str(result.model_dir), engine="onnx", precision="fp32")
    np.testing.assert_allclose(onnx_clf.probabilities(texts), torch_clf.probabilities(texts), atol=1e-5)
    assert torch_clf.label_names == tuple(sorted(NAMES))
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    assert "int8_check" in meta["onnx"]  # the int8 graph was built and checked like any other


def test_predict_card_and_seqcls_keep_the_names(named_run, tmp_path):
    space, _, result = named_run
    out = runner.invoke(app, ["predict", "bland dull boring", "--model", str(result.model_dir), "--format", "json",
                              "--engine", "torch", "--workdir", str(space.root)])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)[0]
    assert set(row["probabilities"]) == set(NAMES) and row["label"] in NAMES
    # The card's snippet, run as written with transformers alone, gives predict's label.
    card = (result.model_dir / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    snippet = snippet.replace('"this folder or its hub repository"', repr(str(result.model_dir)))
    snippet = snippet.replace("A gripping, beautifully acted film.", "bland dull boring")
    printed = []
    exec(snippet, {"print": printed.append})
    assert printed[0] == pytest.approx(row["probabilities"], abs=1e-4)
    assert max(printed[0], key=printed[0].get) == row["label"]
    # A linear head cannot score words of several tokens: one line, exit 2, no folder.
    out = runner.invoke(app, ["export", str(result.model_dir), "--seq-cls", "--output", str(tmp_path / "sc")])
    assert out.exit_code == 2 and "one single-token label word per class" in out.output
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "sc").exists()


def test_several_words_per_class_from_the_command_line(tmp_path, folders, named_data):
    out = runner.invoke(app, ["prepare", "--data", str(named_data), "--model", str(folders["gpt2"]), "--max-len", "32",
                              "--label-words", " awful| bland, dull| the, great| wonderful",
                              "--label-names", "very negative,neutral,very positive", "--workdir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    manifest = json.loads(next((tmp_path / "prepared").glob("*/manifest.json")).read_text())
    assert [len(c) for c in manifest["label_words"]] == [2, 2, 2]


@pytest.mark.parametrize("words, fragment", [
    (" awful|, bland, great", "empty word"),
    (" awful, bland, awful", "repeats"),
    (" awful, bland| awful, great", "repeats"),
    (" awful, bland", "3 names for 2 label words"),
    (" very very very very very very very negative, bland, great", "more than --max-len"),
])
def test_bad_label_words_are_one_line_exit_2(tmp_path, folders, named_data, words, fragment):
    args = ["prepare", "--data", str(named_data), "--model", str(folders["gpt2"]), "--max-len", "8",
            "--label-words", words, "--label-names", "very negative,neutral,very positive", "--workdir", str(tmp_path)]
    out = runner.invoke(app, args)
    assert out.exit_code == 2, out.output
    assert fragment in out.output and len(out.output.strip().splitlines()) == 1


# --- few examples -----------------------------------------------------------------------------------

def test_shots_keep_k_per_class_drawn_with_the_seed(tmp_path, folders, named_data):
    from rtsent.artifacts.workspace import Workspace

    space = Workspace.resolve(tmp_path)
    base = dict(data=str(named_data), model=str(folders["gpt2"]), max_len=32, shots=4)
    one = prepare.run(PrepareConfig(**base, seed=1), space)
    again = prepare.run(PrepareConfig(**base, seed=1), space)
    other = prepare.run(PrepareConfig(**base, seed=2), space)
    assert again.cache_hit and not other.cache_hit and one.meta.fingerprint != other.meta.fingerprint
    for split in ("train", "validation"):
        assert one.meta.splits[split]["per_class"] == {n: 4 for n in sorted(NAMES)}
    assert one.meta.splits["test"]["rows"] == 48  # test stays whole
    import datasets

    texts = {}
    for result in (one, other):
        dd = datasets.load_from_disk(str(result.path))
        texts[result.meta.fingerprint] = sorted(map(tuple, dd["train"]["input_ids"]))
    assert len({tuple(v) for v in texts.values()}) == 2  # another seed, another draw
    out = runner.invoke(app, ["prepare", "--data", str(named_data), "--model", str(folders["gpt2"]), "--shots", "40", "--max-len", "32",
                              "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "--shots 40: class" in out.output and "32 train rows" in out.output, out.output


def test_few_shot_training_makes_one_step_a_training_row_below_thirty(tmp_path, folders, named_data, monkeypatch):
    """4 a class of 3 classes is 12 training rows: 12 steps (30 would overfit so few; docs/method.md), recorded.
    Its 12 validation rows are too few to choose a checkpoint: one evaluation, at the end; with the threshold at
    12 rows the same run is evaluated at every step (12 // 10 = 1), as a large validation split would be."""
    from rtsent.artifacts.workspace import Workspace

    space = Workspace.resolve(tmp_path)
    prepare.run(PrepareConfig(data=str(named_data), model=str(folders["gpt2"]), max_len=32, shots=4), space)

    def evaluations(name: str) -> int:
        result = train.run(TrainConfig(model=str(folders["gpt2"]), run_name=name, precision="fp32", onnx=False,
                                       plots=False), space)
        assert result.steps == 12
        assert json.loads(result.run.config.read_text())["config"]["min_steps"] == 12
        return sum("eval_accuracy" in line for line in result.run.metrics.read_text().splitlines())

    assert evaluations("few") == 1
    monkeypatch.setattr(train, "FEW_SHOT_CHOOSING_ROWS", 12)
    assert evaluations("few-choosing") == 12


# --- LoRA, serve, zero-shot and calibration with several words a class -----------------------------------

VERBALIZER = (" awful| dull| very bad", " the| it", " great| very wonderful")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, folders, named_data):
    from rtsent.artifacts.workspace import Workspace

    space = Workspace.resolve(tmp_path_factory.mktemp("verbalizer-ws"))
    prepare.run(PrepareConfig(data=str(named_data), model=str(folders["llama"]), max_len=32,
                              prompt=PromptConfig(label_words=VERBALIZER, label_names=tuple(NAMES))), space)
    result = train.run(TrainConfig(model=str(folders["llama"]), lr=1e-2, batch_size=16, max_steps=4, run_name="lora",
                                   precision="fp32", warmup=0.0, lora=True, lora_targets="q_proj,v_proj"), space)
    return space, result


def test_a_lora_model_with_a_verbalizer_scores_alike_on_every_engine(lora_run):
    from rtsent.engines import open_classifier

    space, result = lora_run
    texts = named_split(8, 11)["text"]
    torch_clf = open_classifier(str(result.model_dir), engine="torch", precision="fp32")
    assert [len(c) for c in torch_clf.encoder.label_words.classes] == [3, 2, 2]
    assert max(len(w) for w in torch_clf.encoder.label_words.words) > 1
    onnx_clf = open_classifier(str(result.model_dir), engine="onnx", precision="fp32")
    np.testing.assert_allclose(onnx_clf.scores(onnx_clf.encoder.encode(texts).input_ids),
                               torch_clf.scores(torch_clf.encoder.encode(texts).input_ids), atol=1e-4)
    # The model the torch engine loads is the base with the adapter merged: score it by hand, word by word.
    model = torch_clf.model
    rows = torch_clf.encoder.encode(texts[:2]).input_ids
    reference = by_hand(model, rows, torch_clf.encoder.label_words)
    ours = torch_clf.scores(rows)
    np.testing.assert_allclose(softmax(ours.astype(np.float64)), softmax(reference), atol=1e-5)


def test_serve_answers_with_the_data_names(lora_run):
    from test_serve import Server

    import httpx

    _, result = lora_run
    from rtsent.engines import open_classifier

    texts = named_split(4, 12)["text"]
    expected = open_classifier(str(result.model_dir), engine="torch", precision="fp32").probabilities(texts)
    srv = Server(result.model_dir, "--precision", "fp32", "--engine", "torch")
    try:
        got = httpx.post(srv.url + "/predict", json={"inputs": texts}, timeout=60).json()
    finally:
        srv.stop()
    for row, probs in zip(got, expected):
        assert {r["label"]: r["score"] for r in row} == pytest.approx(dict(zip(NAMES, probs.tolist())), abs=1e-5)


def test_zero_shot_and_calibration_score_several_token_words(tmp_path, folders, named_data):
    """A base model scored zero-shot on data with multi-token class names; contextual calibration on top."""
    from rtsent.engines import open_classifier

    prompt = PromptConfig(label_words=(" very negative", " neutral", " very positive"), label_names=tuple(NAMES))
    clf = open_classifier(str(folders["gpt2"]), prompt, 32, engine="torch", precision="fp32")
    rows = clf.encoder.encode(TEXTS).input_ids
    model = load_model(str(folders["gpt2"])).eval()
    np.testing.assert_allclose(clf.probabilities(TEXTS), softmax(by_hand(model, rows, clf.encoder.label_words)),
                               atol=1e-5)
    out = runner.invoke(app, ["evaluate", "--model", str(folders["gpt2"]), "--zero-shot", "--data",
                              str(named_data / "test.parquet"), "--label-words", ",".join(prompt.label_words),
                              "--label-names", ",".join(NAMES), "--calibrate", "--engine", "torch", "--no-plots",
                              "--output", str(tmp_path / "zs.json"), "--workdir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "zs.json").read_text())
    assert report["examples"] == 48 and set(report["per_class"]) == set(NAMES)
    assert len(report["calibration"]["contextual"]["p_cf"]) == 3  # content-free scores of the three classes
