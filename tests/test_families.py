"""Every model family through the same code: tiny random GPT-2, OPT, GPT-NeoX, Llama and Qwen2 folders.

Llama gets a SentencePiece-style tokenizer (Metaspace "▁" words, <s> added by its post-processor) that
the test trains itself; OPT a byte-level BPE that adds a </s> BOS like OPT's; GPT-2, GPT-NeoX and Qwen2
the plain byte-level BPE of conftest. References are the tokenizer's own call on the whole prompt and
the model's own full forward.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import synthetic_review, write_splits
from rtsent import evaluate, predict, prepare, train
from rtsent.core import families
from rtsent.config import EvaluateConfig, PredictConfig, PrepareConfig, PromptConfig, TrainConfig
from rtsent.errors import UsageError
from rtsent.core.modeling import label_logits, last_token_hidden, load_model, load_tokenizer, pad_batch
from rtsent.core.prompts import PromptEncoder
from rtsent.artifacts.workspace import Workspace
from helpers import default_prompt

TEMPLATE = "{text}\nSentiment:"


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    return [synthetic_review(rng, i % 2) + "\nSentiment: " + ("positive" if i % 2 else "negative") for i in range(n)]


def _sentencepiece_tokenizer(folder: Path) -> Path:
    """A Llama-style tokenizer: BPE over Metaspace words ("▁word"), <s> prepended by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return folder


def _bos_byte_level_tokenizer(folder: Path) -> Path:
    """An OPT-style tokenizer: byte-level BPE whose encodings start with </s> (OPT's BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_corpus(), trainer)
    tk.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="</s>", eos_token="</s>", pad_token="<pad>").save_pretrained(folder)
    return folder


def _config(family: str, vocab: int, tok) -> object:
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen2Config

    ids = dict(vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)
    if family == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **ids)
    if family == "opt":
        return OPTConfig(ffn_dim=64, word_embed_proj_dim=32, pad_token_id=tok.pad_token_id, **small, **ids)
    if family == "gpt_neox":
        return GPTNeoXConfig(intermediate_size=64, **small, **ids)
    if family == "llama":
        return LlamaConfig(intermediate_size=64, num_key_value_heads=1, **small, **ids)
    return Qwen2Config(intermediate_size=64, num_key_value_heads=1, **small, **ids)


FAMILIES = ["gpt2", "opt", "gpt_neox", "llama", "qwen2"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """One saved folder (safetensors + tokenizer) per family, random weights, 2 layers, width 32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("families")
    tokenizers = {"llama": _sentencepiece_tokenizer(root / "sp-tokenizer"),
                  "opt": _bos_byte_level_tokenizer(root / "bos-bpe-tokenizer")}
    folders = {}
    for i, family in enumerate(FAMILIES):
        tok = AutoTokenizer.from_pretrained(str(tokenizers.get(family, tokenizer_dir)))
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(_config(family, len(tok), tok))
        folder = root / family
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        folders[family] = folder
    return folders


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("family-data"), sizes=(64, 32, 32))


# --- prompts as each tokenizer builds them --------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_equal_the_tokenizers_own_encoding_of_the_whole_prompt(family_dirs, family):
    tok = load_tokenizer(str(family_dirs[family]))
    encoder = PromptEncoder(PromptConfig(template=TEMPLATE), tok, 64)
    texts = ["the movie is dull and bland", "a charming story with brilliant actors", "it"]
    expected = [tok(TEMPLATE.format(text=t), add_special_tokens=True)["input_ids"] for t in texts]
    assert encoder.encode(texts).input_ids == expected
    assert encoder.bos_ids == ([] if family not in ("llama", "opt") else [tok.bos_token_id])
    for word, label_id in zip((" negative", " positive"), encoder.label_ids):
        prompt = TEMPLATE.format(text=texts[0])
        assert tok(prompt + word)["input_ids"] == tok(prompt)["input_ids"] + [label_id]
    if family == "llama":
        assert tok.convert_ids_to_tokens(encoder.label_ids) == ["▁negative", "▁positive"]


def test_sentencepiece_label_word_of_several_pieces_is_scored_piece_by_piece(family_dirs):
    tok = load_tokenizer(str(family_dirs["llama"]))
    encoder = PromptEncoder(PromptConfig(label_words=(" negative", " wonderfully")), tok, 64)
    pieces = encoder.label_words.describe(tok)[1][0]
    assert len(pieces) > 1 and pieces[0].startswith("▁wonderful") and "".join(pieces) == "▁wonderfully"
    # A max-len that leaves the word one token short of room after the template is refused, naming the word.
    short = encoder.prefix_len + len(encoder.suffix_ids) + len(pieces)
    with pytest.raises(UsageError, match=rf"' wonderfully' is {len(pieces)} tokens, more than --max-len {short} leaves"):
        PromptEncoder(PromptConfig(label_words=(" negative", " wonderfully")), tok, short)


def test_truncation_keeps_bos_and_the_template_tail(family_dirs):
    tok = load_tokenizer(str(family_dirs["llama"]))
    encoder = PromptEncoder(PromptConfig(template=TEMPLATE), tok, 12)
    batch = encoder.encode([" ".join(["wonderful"] * 40)])
    ids = batch.input_ids[0]
    whole = tok(TEMPLATE.format(text=" ".join(["wonderful"] * 40)))["input_ids"]
    assert len(ids) == 12 and batch.truncated == [True]
    assert ids[0] == tok.bos_token_id and ids[-len(encoder.suffix_ids):] == whole[-len(encoder.suffix_ids):]
    assert ids[: 12 - len(encoder.suffix_ids)] == whole[: 12 - len(encoder.suffix_ids)]


# --- label scores are the model's own next-token logits ----------------------------------------------------


def _extra_families() -> dict[str, object]:
    """Families whose forward transforms lm_head's output: scaled (Cohere, Granite divides, HyperCLOVAX
    multiplies, FalconH1's lm_head_multiplier) or soft-capped (Gemma 2)."""
    from transformers import (AutoModelForCausalLM, CohereConfig, FalconH1Config, Gemma2Config, GraniteConfig,
                              HyperCLOVAXConfig)

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    configs = {"cohere": CohereConfig(logit_scale=0.25, **small),
               "gemma2": Gemma2Config(final_logit_softcapping=0.5, head_dim=16, **small),
               "granite": GraniteConfig(logits_scaling=4.0, **small),
               "hyperclovax": HyperCLOVAXConfig(logits_scaling=0.25, **small),
               "falcon_h1": FalconH1Config(lm_head_multiplier=0.25, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                           mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=16, **small)}
    torch.manual_seed(0)
    return {name: AutoModelForCausalLM.from_config(c).eval() for name, c in configs.items()}


SCALED = ["cohere", "gemma2", "granite", "hyperclovax", "falcon_h1"]


@pytest.mark.parametrize("family", FAMILIES + SCALED)
def test_label_scores_equal_the_full_forward_logits_at_each_rows_last_token(family_dirs, family):
    if family in family_dirs:
        model = load_model(str(family_dirs[family])).eval()
    else:
        model = _extra_families()[family]
    rows = [[5, 9, 12, 7, 3], [4, 11], [8, 6, 10]]  # ragged: right padding with an attention mask
    batch = pad_batch(rows, pad_id=0)
    label_ids = torch.tensor([13, 21])
    with torch.no_grad():
        ours = label_logits(model, last_token_hidden(model, **batch), label_ids)
        full = model(**batch).logits
    expected = torch.stack([full[i, len(r) - 1, label_ids] for i, r in enumerate(rows)])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    if family in SCALED:  # the transform matters: the raw head's output differs
        raw = last_token_hidden(model, **batch) @ model.get_output_embeddings().weight[label_ids].T
        assert not torch.allclose(raw, expected, atol=1e-3)


# --- the whole pipeline, per family -------------------------------------------------------------------------


IGNORED_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "pad_token_id"}


def _config_json(folder: Path) -> dict:
    data = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in data.items() if k not in IGNORED_CONFIG_KEYS}


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_train_evaluate_predict_for_each_family(family_dirs, family_data, tmp_path, family):
    model = str(family_dirs[family])
    ws = Workspace.resolve(tmp_path / "ws")
    prepared = prepare.run(PrepareConfig(data=str(family_data), model=model, max_len=32), ws)
    tok = load_tokenizer(model)
    first = prepared.meta.splits["train"]
    assert first["rows"] == 64
    result = train.run(TrainConfig(model=model, lr=5e-3, batch_size=16, max_steps=4, eval_every=4,
                                   precision="fp32", warmup=0.0, run_name=family), ws)
    assert result.steps == 4 and result.best_accuracy is not None
    # The export describes the base model's architecture (no run-time dropout or kernel choices).
    assert _config_json(result.model_dir) == _config_json(family_dirs[family])
    report = evaluate.run(EvaluateConfig(model=str(result.model_dir), split="test", precision="fp32"), ws)
    # The accuracy of the exported model's own forward on the test reviews, each prompt tokenized whole.
    import pyarrow.parquet as pq

    from transformers import AutoModelForCausalLM

    test = pq.read_table(family_data / "test.parquet").to_pydict()
    plain = AutoModelForCausalLM.from_pretrained(str(result.model_dir)).eval()
    label_ids = [w[0][0] for w in prepared.meta.label_words.to_list()]
    with torch.no_grad():
        predicted = [int(plain(**tok(default_prompt(t), return_tensors="pt")).logits[0, -1, label_ids].argmax())
                     for t in test["text"]]
    assert report["examples"] == 32
    assert report["accuracy"] == pytest.approx(sum(p == y for p, y in zip(predicted, test["label"])) / 32)
    out = io.StringIO()
    texts = ("a wonderful and moving film", "dull, tedious, lifeless")
    predict.run(PredictConfig(model=str(result.model_dir), texts=texts, format="jsonl", precision="fp32"), ws, out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["text"] for r in rows] == list(texts)
    # The scores predict reports are the exported model's own next-token logits after the prompt.
    # predict applies the temperature fitted on validation at export (rtsent.json "calibration").
    temperature = json.loads((result.model_dir / "rtsent.json").read_text())["calibration"]["temperature"]
    for text, row in zip(texts, rows):
        ids = tok(default_prompt(text), return_tensors="pt")
        with torch.no_grad():
            logits = plain(**ids).logits[0, -1, label_ids]
        expected = torch.softmax(logits / temperature, -1)
        assert [row["probabilities"][n] for n in ("negative", "positive")] == pytest.approx(expected.tolist(), abs=1e-4)


# --- options that work for every family or say they don't -----------------------------------------------------


@pytest.mark.parametrize("family, keys", [("gpt2", {"attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"}),
                                          ("opt", {"dropout", "attention_dropout"}),
                                          ("gpt_neox", {"attention_dropout", "hidden_dropout", "classifier_dropout"}),
                                          ("llama", {"attention_dropout"}), ("qwen2", {"attention_dropout"})])
def test_dropout_reaches_every_dropout_rate_of_each_family(family_dirs, family, keys):
    model = load_model(str(family_dirs[family]), dropout=0.25)
    assert set(families.dropout_keys(model.config)) == keys
    assert {k: getattr(model.config, k) for k in keys} == {k: 0.25 for k in keys}
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates <= {0.25}  # every dropout layer built from the config got the rate
    # ...and it acts in the forward (Llama and Qwen2 have no Dropout modules: their attention drops by rate):
    # two training-mode forwards differ at 0.25, and are identical once --dropout 0 switched it off.
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def two_forwards(m):
        m.train()
        with torch.no_grad():
            return [torch.manual_seed(seed) and m(ids).logits for seed in (0, 1)]

    dropped = two_forwards(model)
    assert not torch.allclose(*dropped)
    assert torch.equal(*two_forwards(load_model(str(family_dirs[family]), dropout=0.0)))


@pytest.mark.parametrize("family, overrides, message", [
    ("gpt2", "n_layr=1", "no 'n_layr'; did you mean n_layer"),
    ("llama", "num_hiden_layers=1", "did you mean num_hidden_layers"),
    ("gpt2", "n_embd=33", "n_embd=33 is not divisible by n_head=2"),
    ("llama", "hidden_size=40,num_attention_heads=4,num_key_value_heads=3", "num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    ("opt", "hidden_size=36,num_attention_heads=8", "hidden_size=36 is not divisible by num_attention_heads=8"),
    ("qwen2", "num_hidden_layers=two", "not a valid int"),
])
def test_config_overrides_are_checked_by_the_configs_own_names(family_dirs, family, overrides, message):
    with pytest.raises(UsageError, match=message):
        load_model(str(family_dirs[family]), from_scratch=True, overrides=overrides)


@pytest.mark.parametrize("family, overrides, check", [
    ("llama", "num_hidden_layers=1,hidden_size=64,num_attention_heads=4",
     lambda m: (m.config.head_dim, m.model.layers[0].self_attn.q_proj.out_features, len(m.model.layers)) == (16, 64, 1)),
    ("qwen2", "num_hidden_layers=3", lambda m: len(m.config.layer_types) == 3 and len(m.model.layers) == 3),
    ("gpt_neox", "hidden_size=48,num_attention_heads=3",  # the built attention follows: 3 heads of 16, qkv 3 x 48
     lambda m: (m.gpt_neox.layers[0].attention.head_size, m.gpt_neox.layers[0].attention.query_key_value.out_features,
                m.gpt_neox.embed_in.embedding_dim) == (16, 144, 48)),
])
def test_config_overrides_rebuild_derived_fields(family_dirs, family, overrides, check):
    assert check(load_model(str(family_dirs[family]), from_scratch=True, overrides=overrides))


def test_dropout_on_a_config_without_dropout_says_so():
    assert families.set_dropout(type("C", (), {"to_dict": lambda self: {}, "model_type": "x"})(), 0.0) == {}
    with pytest.raises(UsageError, match="no dropout setting"):
        families.set_dropout(type("C", (), {"to_dict": lambda self: {"hidden_size": 8}, "model_type": "x"})(), 0.1)


class _OnlyTwoMethods:
    """A tokenizer offering nothing but the two calls PromptEncoder may use (as a torch-free adapter does)."""

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, texts, add_special_tokens):
        return {"input_ids": self._tok(texts, add_special_tokens=add_special_tokens)["input_ids"]}

    def convert_ids_to_tokens(self, ids):
        return self._tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_prompt_encoder_needs_only_calling_the_tokenizer_and_naming_its_tokens(family_dirs, family):
    tok = load_tokenizer(str(family_dirs[family]))
    texts = ["a charming story", "dull"]
    full = PromptEncoder(PromptConfig(), tok, 24)
    minimal = PromptEncoder(PromptConfig(), _OnlyTwoMethods(tok), 24)
    assert (minimal.label_ids, minimal.encode(texts)) == (full.label_ids, full.encode(texts))
    several = PromptConfig(label_words=(" negative", " wonderfully| very good"))
    assert PromptEncoder(several, _OnlyTwoMethods(tok), 24).label_words == PromptEncoder(several, tok, 24).label_words


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_errors_file_decodes_the_review_without_the_bos_or_the_template(family_dirs, family):
    from types import SimpleNamespace

    tok = load_tokenizer(str(family_dirs[family]))
    prompt = PromptConfig(template="movie: {text}\nSentiment:")  # words the tiny tokenizers know
    encoder = PromptEncoder(prompt, tok, 64)
    review = "the film is charming and funny"
    examples = evaluate.Examples(encoder.encode([review]).input_ids, [1], "test", {})
    clf = SimpleNamespace(encoder=encoder, tokenizer=tok, prompt=prompt)
    assert evaluate._text_of(clf, examples, 0).strip() == review


@pytest.mark.parametrize("family, kept_layers", [("llama", {"down_proj"}), ("qwen2", {"down_proj"}), ("gpt2", set())])
def test_the_int8_graph_keeps_the_familys_fp32_layers_and_the_label_projection(family_dirs, tmp_path, family, kept_layers):
    """What the int8 graph keeps in fp32, read from the quantized graph itself: the label projection (the
    graph's output) always, and a gated MLP's down projection in every layer of the families that have one."""
    import onnx

    from rtsent.artifacts import onnx_graph

    plain, int8 = tmp_path / "plain.onnx", tmp_path / "int8.onnx"
    from rtsent.core.prompts import LabelWords

    config, _ = onnx_graph._export_fp32(str(family_dirs[family]), LabelWords.from_list([5, 6]), plain, lambda _: None)
    onnx_graph._quantize(plain, int8, config)
    graph = onnx.load(str(int8)).graph
    float_products = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and
                      any(i in {t.name for t in graph.initializer} for i in n.input)}  # weight products still fp32
    output_node = {o: n for n in graph.node for o in n.output}[graph.output[0].name]
    assert output_node.op_type in ("MatMul", "Gemm") and output_node.name in float_products
    layers = {name.split("/")[-2] for name in float_products - {output_node.name}}
    assert layers == kept_layers
    if kept_layers:
        assert len(float_products) == 1 + config.num_hidden_layers  # one per layer
    assert sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node) > 0  # the rest is int8


# --- the model card's "Use" snippet, run as a reader would run it -----------------------------------------


def card_snippet(card: str) -> str:
    """The python block of a model card's "Use" section."""
    use = card.split("## Use", 1)[1]
    return use.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_the_cards_snippet_gives_predicts_probabilities(family_dirs, tmp_path, family):
    import contextlib
    import io
    import shutil

    from rtsent.artifacts import card
    from rtsent.artifacts.model import ModelMeta
    from rtsent.artifacts.onnx_graph import write_tokenizer_json

    folder = tmp_path / "model"
    shutil.copytree(family_dirs[family], folder)
    tok = load_tokenizer(str(folder))
    prompt = PromptConfig(template="movie: {text}\nSentiment:")
    encoder = PromptEncoder(prompt, tok, 64)
    write_tokenizer_json(tok, folder / "tokenizer.json")
    ModelMeta.new(prompt=prompt, label_words=encoder.label_words, max_len=64, run="r",
                  calibration={"temperature": 1.7, "fitted_on": "validation"}).write(folder)
    code = card_snippet(card.write(folder).read_text())
    assert f"ids = {encoder.bos_ids} + " in code and encoder.bos_ids == ([] if family == "gpt2" else [tok.bos_token_id])
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        exec(code.replace('"this folder or its hub repository"', repr(str(folder))), {})
    from_card = eval(shown.getvalue())  # the dict the snippet prints
    out = io.StringIO()
    predict.run(PredictConfig(model=str(folder), texts=("A gripping, beautifully acted film.",), format="jsonl",
                              precision="fp32", engine="torch"), Workspace.resolve(tmp_path / "ws"), out=out)
    expected = json.loads(out.getvalue())["probabilities"]
    assert from_card.keys() == expected.keys()
    for name in expected:
        assert from_card[name] == pytest.approx(expected[name], abs=1e-6)
