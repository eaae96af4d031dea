"""Frozen configuration dataclasses: the single source of every stage's defaults, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rtsent.errors import UsageError

DEFAULT_MODEL = "gpt2"
DEFAULT_DATA = "rotten_tomatoes"
DEFAULT_TEMPLATE = "{text}\nSentiment:"
DEFAULT_LABEL_WORDS = (" negative", " positive")
TEXT_SLOT = "{text}"
SPLITS = ("train", "validation", "test")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "onnx")
"""auto: the ONNX graph when the model folder has one (`rtsent export`), else torch."""
SCORING_PRECISIONS = PRECISIONS + ("int8",)
"""int8 exists only as an exported ONNX graph (`rtsent export --int8`)."""
LOSSES = ("lm", "label")
FORMATS = ("auto", "table", "json", "jsonl", "csv")
CLASS_WEIGHTS = ("none", "auto")


def _check(problems: list[str]) -> None:
    """Raise one UsageError that lists every problem found, or nothing."""
    if problems:
        raise UsageError("; ".join(problems))


def unescape(text: str) -> str:
    """Turn the escapes a shell user types (\\n, \\t, \\\\) into the characters they mean."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def split_list(value: str) -> tuple[str, ...]:
    """Split a comma-separated option into items, keeping spaces (they matter to GPT-2's BPE)."""
    return tuple(unescape(part) for part in value.split(","))


@dataclass(frozen=True)
class PromptConfig:
    """How a review becomes a prompt, and which next token stands for each class."""

    template: str = DEFAULT_TEMPLATE
    """Prompt with the review in place of `{text}`; the model predicts the label word right after it."""
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    """One word per class, in class-id order; each must be a single token of the tokenizer."""
    label_names: tuple[str, ...] = ()
    """Names shown to users and matched against string labels; default: the label words, stripped."""

    def __post_init__(self) -> None:
        problems = []
        if self.template.count(TEXT_SLOT) != 1:
            problems.append(
                f"--template must contain {TEXT_SLOT} exactly once, got {self.template!r}"
            )
        if len(self.label_words) < 2:
            problems.append(f"--label-words needs at least two words, got {list(self.label_words)!r}")
        if any(not w.strip() for w in self.label_words):
            problems.append(f"--label-words has an empty word: {list(self.label_words)!r}")
        if len(set(self.label_words)) != len(self.label_words):
            problems.append(f"--label-words repeats a word: {list(self.label_words)!r}")
        if self.label_names and len(self.label_names) != len(self.label_words):
            problems.append(
                f"--label-names has {len(self.label_names)} names for {len(self.label_words)} label words"
            )
        _check(problems)
        if not self.label_names:
            object.__setattr__(self, "label_names", tuple(w.strip() for w in self.label_words))
        if len(set(self.label_names)) != len(self.label_names):
            _check([f"label names must be distinct, got {list(self.label_names)!r}"])

    @property
    def prefix(self) -> str:
        return self.template.split(TEXT_SLOT)[0]

    @property
    def suffix(self) -> str:
        return self.template.split(TEXT_SLOT)[1]

    @property
    def num_classes(self) -> int:
        return len(self.label_words)


@dataclass(frozen=True)
class PrepareConfig:
    """Options of `rtsent prepare`."""

    data: str = DEFAULT_DATA
    """Hub dataset name, or a local folder of train/validation/test files, or a save_to_disk folder."""
    model: str = DEFAULT_MODEL
    """Model whose tokenizer is used (hub name or local folder)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_len: int = 128
    """Longest prompt in tokens; longer reviews lose their tail, never the template's."""
    text_column: str = "text"
    label_column: str = "label"
    force: bool = False
    """Rebuild even when a prepared dataset with the same fingerprint exists."""
    subset: str | None = None
    """Hub dataset configuration (the second argument of datasets.load_dataset), e.g. sst2 of glue."""
    splits: str = ""
    """Comma-separated role=split pairs, e.g. validation=test,test=none; unmapped roles use their own name."""
    validation_fraction: float = 0.1
    """Share of each class of train held out as validation when the data has no validation split."""
    seed: int = 42
    """Seed of that held-out draw."""

    def __post_init__(self) -> None:
        problems = [f"--max-len must be at least 2, got {self.max_len}"] if self.max_len < 2 else []
        if not 0 < self.validation_fraction < 1:
            problems.append(f"--validation-fraction must be between 0 and 1, got {self.validation_fraction}")
        try:
            self.split_map
        except UsageError as exc:
            problems.append(str(exc))
        _check(problems)

    @property
    def split_map(self) -> dict[str, str | None]:
        """--splits as {role: source split name, or None for 'none'}; raises UsageError when malformed."""
        mapping: dict[str, str | None] = {}
        for item in filter(None, (part.strip() for part in self.splits.split(","))):
            role, sep, name = (x.strip() for x in item.partition("="))
            if not sep or role not in SPLITS or not name:
                raise UsageError(f"--splits takes role=split pairs with roles {', '.join(SPLITS)} "
                                 f"(e.g. validation=test,test=none), got {item!r}")
            if role in mapping:
                raise UsageError(f"--splits names {role} twice")
            mapping[role] = None if name.lower() == "none" else name
        return mapping


FULL_LR = 5e-5
LORA_LR = 5e-4


@dataclass(frozen=True)
class TrainConfig:
    """Options of `rtsent train`."""

    model: str = DEFAULT_MODEL
    """Starting weights (hub name or local folder), or the config to build from with from_scratch."""
    prepared: str | None = None
    """Prepared dataset folder or fingerprint; default: the latest one in the workspace."""
    lr: float | None = None
    """Peak learning rate; None: FULL_LR, or LORA_LR with --lora (a rank-8 adapter needs a larger step:
    SmolLM2-135M, one epoch: LoRA test accuracy 0.793 at 5e-5 (the issue), 0.859 at 5e-4, docs/benchmarks.md)."""
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: float = 2.0
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides epochs when > 0)."""
    warmup: float = 0.06
    """Warm-up: a ratio of all steps when < 1, else a number of steps."""
    weight_decay: float = 0.01
    eval_every: int | None = None
    """Evaluate on validation every N steps; default: once per epoch."""
    save_every: int | None = None
    """Checkpoint every N steps (a multiple of eval_every), and at every new best evaluation; default: at each evaluation."""
    save_limit: int = 2
    """Checkpoints kept on disk (the best and the latest are always among them)."""
    seed: int = 42
    loss: str = "lm"
    """lm: cross-entropy over the whole vocabulary (the seed recipe); label: over the label words."""
    precision: str = "auto"
    dropout: float | None = 0.0
    """Dropout rate of every dropout layer; None keeps the model config's (GPT-2: 0.1)."""
    gradient_checkpointing: bool = False
    compile: bool = False
    """torch.compile the model (lengths are bucketed to multiples of 16 so shapes repeat)."""
    run_name: str | None = None
    resume: bool = False
    from_scratch: bool = False
    config_overrides: str = ""
    """Comma-separated key=value overrides of the model config, used with from_scratch."""
    early_stopping: int | None = None
    """Stop after this many evaluations without a better validation accuracy; None: never."""
    class_weights: str = "none"
    """auto: weight the loss of each class by its inverse frequency in the train split."""
    report_to: str = "none"
    """Comma-separated Trainer integrations to log to (tensorboard, wandb, mlflow, ...), or none."""
    plots: bool = True
    """Draw the training curves to runs/<name>/plots/training.png at the end."""
    onnx: bool = True
    """Also export the model as an ONNX graph (the fast engine of evaluate/predict)."""
    train_layers: int | None = None
    """Train only the last N transformer blocks and what follows them (final norm, an untied head); the
    embeddings and every earlier block stay frozen, so the backward pass stops at block L-N. None: all.
    With lora: adapters in those blocks only."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of every weight."""
    lora_r: int = 8
    """Rank of the LoRA update matrices."""
    lora_alpha: float = 16.0
    """LoRA scaling: the update is multiplied by alpha / r."""
    lora_dropout: float = 0.0
    lora_targets: str | None = None
    """Comma-separated layer names LoRA adapts; default: the family's (GPT-2: c_attn, Llama: q_proj,v_proj)."""
    lora_export: str = "merged"
    """merged: a plain model folder (adapter merged into the weights); adapter: the adapter alone."""

    def __post_init__(self) -> None:
        if self.lr is None:  # resolved once, so run.json, the card and resume see the rate that was used
            object.__setattr__(self, "lr", LORA_LR if self.lora else FULL_LR)
        problems = []
        for name in ("lr", "batch_size", "eval_batch_size", "epochs", "save_limit"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.warmup < 0 or self.weight_decay < 0:
            problems.append("--warmup and --weight-decay must not be negative")
        if self.loss not in LOSSES:
            problems.append(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.save_every is not None and self.eval_every is None:
            problems.append("--save-every needs --eval-every (the best checkpoint is chosen at evaluations)")
        elif self.save_every and self.eval_every and self.save_every % self.eval_every:
            problems.append(
                f"--save-every ({self.save_every}) must be a multiple of --eval-every ({self.eval_every})"
            )
        if self.train_layers is not None and self.train_layers <= 0:
            problems.append(f"--train-layers must be a positive number of blocks, got {self.train_layers}")
        if self.early_stopping is not None and self.early_stopping <= 0:
            problems.append(f"--early-stopping must be a positive number of evaluations, got {self.early_stopping}")
        if self.class_weights not in CLASS_WEIGHTS:
            problems.append(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}")
        trackers = [t.strip() for t in self.report_to.split(",")]
        if "" in trackers or ("none" in trackers and len(trackers) > 1):
            problems.append(f"--report-to takes none or comma-separated integrations (e.g. tensorboard,wandb), "
                            f"got {self.report_to!r}")
        if self.config_overrides and not self.from_scratch:
            problems.append("--config-overrides only applies with --from-scratch")
        if self.run_name is not None and not _safe_name(self.run_name):
            problems.append(f"--run-name may use letters, digits, '.', '_' and '-' only, got {self.run_name!r}")
        problems += self._lora_problems()
        _check(problems)

    def _lora_problems(self) -> list[str]:
        if not self.lora:
            fields = [f for f in dataclasses.fields(self) if f.name.startswith("lora_")]
            changed = [f.name for f in fields if getattr(self, f.name) != f.default]
            return [f"--{k.replace('_', '-')} needs --lora" for k in changed]
        problems = []
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            problems.append("--lora-r and --lora-alpha must be positive")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_export not in ("merged", "adapter"):
            problems.append(f"--lora-export must be merged or adapter, got {self.lora_export!r}")
        elif self.lora_export == "adapter" and self.from_scratch:
            problems.append("--lora-export adapter needs saved base weights; with --from-scratch use --lora-export merged")
        return problems


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `rtsent evaluate`."""

    model: str | None = None
    """Exported model folder, or a base model for zero-shot; default: the latest run's model."""
    split: str = "validation"
    prepared: str | None = None
    prompt: PromptConfig | None = None
    """Prompt for a base model that has no rtsent.json (zero-shot)."""
    batch_size: int = 64
    precision: str = "auto"
    engine: str = "auto"
    output: str | None = None
    bins: int = 15
    """Bins of the expected calibration error."""
    data: str | None = None
    """A labelled csv/jsonl/parquet file (or a folder's <split> file) to score instead of prepared data."""
    text_column: str = "text"
    label_column: str = "label"
    calibrate: bool = False
    """Contextual calibration (content-free inputs through the same prompt), for zero-shot models."""
    errors: int | None = None
    """Print this many most confident mistakes and write every mistake next to the report."""
    plots: bool = True
    """Draw confusion matrix, reliability diagram and probability histogram next to the report."""

    def __post_init__(self) -> None:
        problems = []
        if self.data and self.prepared:
            problems.append("--data and --prepared both name what to score; pass one of them")
        if self.errors is not None and self.errors < 0:
            problems.append(f"--errors must be 0 or more, got {self.errors}")
        if self.split not in SPLITS:
            problems.append(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        problems += _scoring_problems(self.precision, self.engine)
        if self.batch_size <= 0 or self.bins <= 0:
            problems.append("--batch-size and --bins must be positive")
        _check(problems)


@dataclass(frozen=True)
class PredictConfig:
    """Options of `rtsent predict`."""

    model: str | None = None
    texts: tuple[str, ...] = ()
    file: str | None = None
    """txt (one review a line), csv, jsonl or parquet; '-' reads lines from stdin."""
    text_column: str = "text"
    format: str = "auto"
    """auto: a table for texts given as arguments, jsonl for files and stdin."""
    batch_size: int = 64
    precision: str = "auto"
    engine: str = "auto"
    max_len: int | None = None
    """Longest prompt; default: the max-len the model was trained with."""
    keep_columns: tuple[str, ...] = ()
    """Columns of a csv/jsonl/parquet --file copied into each output row (e.g. an id)."""

    def __post_init__(self) -> None:
        problems = []
        if bool(self.texts) == bool(self.file):
            problems.append("give texts as arguments, or --file PATH, or '-' for stdin (one of them)")
        from rtsent.sources.inputs import EMPTY, problem

        for i, text in enumerate(self.texts, start=1):
            reason = problem(text)  # undecodable argv bytes arrive as lone surrogates
            if reason == EMPTY:
                problems.append(f"text {i} is empty; give each review as a non-empty argument")
            elif reason:
                problems.append(f"text {i} is {reason}; pass UTF-8 text (or --file with UTF-8 content)")
        if self.format not in FORMATS:
            problems.append(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        problems += _scoring_problems(self.precision, self.engine)
        if self.batch_size <= 0:
            problems.append("--batch-size must be positive")
        _check(problems)


@dataclass(frozen=True)
class ExportConfig:
    """Options of `rtsent export`."""

    model: str | None = None
    """Model folder written by `rtsent train`; default: the latest run's model."""
    int8: bool = False
    """Also write a dynamically quantized int8 graph (smaller, faster on CPU)."""
    seq_cls: bool = False
    """Write a standard *ForSequenceClassification folder instead (transformers' pipeline, vLLM, TEI)."""
    output: str | None = None
    """With seq_cls: the folder to write; default runs/<name>/seq-cls (or <model>-seq-cls)."""

    def __post_init__(self) -> None:
        problems = []
        if self.output and not self.seq_cls:
            problems.append("--output names the folder of --seq-cls; add --seq-cls (ONNX graphs go into the model folder)")
        if self.seq_cls and self.int8:
            problems.append("--int8 adds a graph to the model folder; run it without --seq-cls")
        _check(problems)


def _scoring_problems(precision: str, engine: str) -> list[str]:
    problems = []
    if precision not in SCORING_PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(SCORING_PRECISIONS)}, got {precision!r}")
    if engine not in ENGINES:
        problems.append(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return problems


@dataclass(frozen=True)
class PushConfig:
    """Options of `rtsent push`."""

    run: str
    """Run name (its exported model) or an exported model folder."""
    repo_id: str
    """Hub repository, "user/name" or "org/name"."""
    private: bool = False

    def __post_init__(self) -> None:
        _check([] if self.repo_id.strip() else ["--repo-id must not be empty"])


@dataclass(frozen=True)
class ServeConfig:
    """Options of `rtsent serve`."""

    model: str | None = None
    """Exported model folder; default: the latest run's model."""
    host: str = "127.0.0.1"
    """Interface to listen on; loopback unless the user opens it on purpose (e.g. 0.0.0.0)."""
    port: int = 8000
    engine: str = "auto"
    """auto (the fastest the folder supports), torch or onnx."""
    precision: str = "auto"
    max_batch_size: int = 32
    """Most texts scored in one forward pass; concurrent requests are gathered up to this."""
    max_wait_ms: float = 5.0
    """How long the first queued request waits for others to join its batch."""
    max_queue: int = 256
    """Requests waiting for the model; beyond this a request is answered 429 with Retry-After."""
    max_texts: int = 64
    """Most texts in one request (413 beyond)."""
    max_body_bytes: int = 1_000_000
    """Largest request body in bytes (413 beyond)."""
    timeout_s: float = 30.0
    """A request not answered within this many seconds gets 504."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535, got {self.port}")
        problems += _scoring_problems(self.precision, self.engine)
        for name in ("max_batch_size", "max_queue", "max_texts", "max_body_bytes", "timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must not be negative, got {self.max_wait_ms}")
        _check(problems)


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "._-" for c in name)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as the plain JSON value it is stored as (tuples become lists), so that what a stage
    returns in memory equals what a later command reads back from disk."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(config)))


def prompt_from_dict(data: dict[str, Any]) -> PromptConfig:
    """Rebuild a PromptConfig from its to_dict() form (as stored in manifests and rtsent.json)."""
    return PromptConfig(
        template=data["template"],
        label_words=tuple(data["label_words"]),
        label_names=tuple(data.get("label_names") or ()),
    )
