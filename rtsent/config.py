"""Frozen configuration dataclasses: the single source of every stage's defaults, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from rtsent.errors import UsageError

DEFAULT_MODEL = "gpt2"
DEFAULT_DATA = "rotten_tomatoes"
DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"
"""Chosen on Rotten Tomatoes' validation split (#29, SmolLM2-135M, one epoch, seeds 1 and 2): 0.9015/0.9024 against
0.8780/0.8771 for "{text}\nSentiment:" (the template before, still given by --template); zero-shot 0.782 against
0.738. docs/method.md says what was tried."""
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


def opt(default: Any = None, help: str = "", *, flags: tuple[str, ...] = (), argument: bool = False,
        cli: bool = True, factory: Any = None, repeat: bool = False, parse: Callable[[str], Any] | None = None,
        show: Callable[[Any], str] | None = None, nested: "Nested | None" = None, scoring: bool = True) -> Any:
    """A config field and its command-line option, written once: the default, the help text (the field's
    documentation too), the flag spelling (default --field-name), whether it is a positional argument, and
    whether it is a command-line option at all. cli.py builds every command's options from these.

    repeat: the option may be given several times, and the command receives the list (evaluate compares the
    models). A field of a config that sits inside another (PromptConfig's) has `parse` (its option's text to the
    value) and `show` (the value as its option's default text); the field holding it has `nested` (which of its
    options the command takes). scoring=False: a PromptConfig field that does not change what is scored."""
    meta = {"help": help, "flags": flags, "argument": argument, "cli": cli, "repeat": repeat, "parse": parse,
            "show": show, "nested": nested, "scoring": scoring}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


REQUIRED = dataclasses.MISSING
"""opt()'s default for a field the user must give."""


@dataclass(frozen=True)
class Nested:
    """How a command takes a config that sits inside its own (the prompt inside PrepareConfig): as options named
    after the inner config's fields."""

    options: dict[str, str | None]
    """The inner fields given as options, each with this command's help for it (None: the field's own help)."""
    prefix: str = ""
    """Put before each option's help ("Zero-shot: ")."""
    base: Callable[[], Any] | None = None
    """The inner config whose fields the given options replace (default: the field's default); with neither an
    option given nor a default, the field is None."""


WORKDIR_HELP = "Workspace folder for prepared data and runs (default: ./data)."
TEMPLATE_HELP = "Prompt template with {text} where the review goes (\\n understood)."
WORDS_HELP = ('Comma-separated label words, one entry per class in class-id order; a word may be several tokens, and '
              'a class may have several words separated by "|" (" great| good, bad| awful"); \\n understood.')
ENGINE_HELP = ("auto (the fastest for the job on this machine: the validated int8 graph, else the ONNX graph for a "
               "single start, torch bf16 for bulk on CPUs with native bf16 or a GPU; said in one line), torch or onnx.")
SCORING_PRECISION_HELP = ("auto, fp32, bf16 or fp16 (torch); auto, fp32 or int8 (onnx; auto takes the int8 graph only "
                          "where it passed its check at export).")


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


def escape(text: str) -> str:
    """The text as a shell user types it (unescape's inverse): newlines and tabs as \\n and \\t."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def split_names(value: str) -> tuple[str, ...]:
    """Split a comma-separated list of names, each stripped."""
    return tuple(n.strip() for n in value.split(","))


WORD_SEPARATOR = "|"
"""Between a class's alternative words in --label-words (" great| good, bad| awful")."""
NAMES_HELP = ("Comma-separated class names in class-id order (default: the data's names, else each class's first "
              "word, stripped).")


@dataclass(frozen=True)
class PromptConfig:
    """How a review becomes a prompt, and which words stand for each class."""

    template: str = opt(DEFAULT_TEMPLATE, TEMPLATE_HELP, parse=unescape, show=escape)
    """Prompt with the review in place of `{text}`; the model predicts the label word right after it."""
    label_words: tuple[str, ...] = opt(DEFAULT_LABEL_WORDS, WORDS_HELP, parse=split_list)
    """One entry per class, in class-id order: a word (any number of tokens), or several separated by "|"
    (a verbalizer). Empty: the words are the label names (with a leading space after a template that ends
    without one), or, when prepare finds no names in the data either, " negative, positive"."""
    label_names: tuple[str, ...] = opt((), NAMES_HELP, parse=split_names, scoring=False)
    """Names shown to users and matched against string labels; default: each class's first word, stripped."""

    def __post_init__(self) -> None:
        problems = []
        if self.template.count(TEXT_SLOT) != 1:
            problems.append(
                f"--template must contain {TEXT_SLOT} exactly once, got {self.template!r}"
            )
        if not self.label_words and self.label_names:
            object.__setattr__(self, "label_words", words_for_names(self.label_names, self.suffix))
        if self.label_words:
            problems += _word_problems(self.label_words)
        if self.label_names and self.label_words and len(self.label_names) != len(self.label_words):
            problems.append(
                f"--label-names has {len(self.label_names)} names for {len(self.label_words)} label words"
            )
        if any(not n.strip() for n in self.label_names):
            problems.append(f"--label-names has an empty name: {list(self.label_names)!r}")
        _check(problems)
        if not self.label_names and self.label_words:
            object.__setattr__(self, "label_names", tuple(words[0].strip() for words in self.class_words))
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

    @property
    def class_words(self) -> tuple[tuple[str, ...], ...]:
        """Each class's words: its --label-words entry split at "|"."""
        return tuple(tuple(entry.split(WORD_SEPARATOR)) for entry in self.label_words)

    @property
    def resolved(self) -> bool:
        """Whether the classes are known (words given or derived from names); prepare resolves the rest."""
        return bool(self.label_words)

    @classmethod
    def unresolved(cls, **fields: Any) -> "PromptConfig":
        """A prompt whose classes are not known yet (no label words): prepare takes them from the data, a model
        from its rtsent.json, a base model the default ones."""
        return cls(**{"label_words": (), **fields})

    def with_names(self, names: tuple[str, ...]) -> "PromptConfig":
        """This prompt for the classes `names` (as the data has them): words from the names."""
        return dataclasses.replace(self, label_words=(), label_names=tuple(names))

    def or_default(self) -> "PromptConfig":
        """This prompt, with " negative, positive" where no words or names were given."""
        return self if self.resolved else dataclasses.replace(self, label_words=DEFAULT_LABEL_WORDS)

    def same_scoring(self, other: "PromptConfig") -> bool:
        """Whether two prompts make the same prompts and score the same words: every field is compared but those
        marked scoring=False (the names, which may differ), so a field added later is never silently ignored."""
        return all(getattr(self, f.name) == getattr(other, f.name)
                   for f in dataclasses.fields(self) if f.metadata.get("scoring", True))


def words_for_names(names: tuple[str, ...], suffix: str) -> tuple[str, ...]:
    """Label words read off class names: the name as written, after a space where the template's suffix does
    not end in whitespace (" very negative" after "Sentiment:", as byte-level BPE and SentencePiece both
    want a word that starts a new word)."""
    space = "" if not suffix or suffix[-1].isspace() else " "
    return tuple(space + name.strip().replace(WORD_SEPARATOR, " ") for name in names)


def _word_problems(entries: tuple[str, ...]) -> list[str]:
    problems = []
    classes = [entry.split(WORD_SEPARATOR) for entry in entries]
    if len(entries) < 2:
        problems.append(f"--label-words needs at least two classes, got {list(entries)!r}")
    if any(not w.strip() for words in classes for w in words):
        problems.append(f"--label-words has an empty word: {list(entries)!r} (classes are separated by ',', "
                        f"a class's alternative words by '{WORD_SEPARATOR}')")
    every = [w for words in classes for w in words]
    repeated = sorted({w for w in every if every.count(w) > 1})
    if repeated:
        problems.append(f"--label-words repeats a word: {repeated!r}; each word belongs to one class")
    return problems


@dataclass(frozen=True)
class PrepareConfig:
    """Options of `rtsent prepare`."""

    data: str = opt(DEFAULT_DATA, "rotten_tomatoes (shipped with rtsent), a hub dataset name, a folder of "
                                  "train/validation/test .parquet/.csv/.tsv/.jsonl files, "
                                  "or a save_to_disk folder.")
    model: str = opt(DEFAULT_MODEL, "Model (hub name, folder, .gguf file, or smollm2) whose tokenizer to use.")
    max_len: int = opt(128, "Longest prompt in tokens; longer reviews lose their tail, never the template.")
    text_column: str = opt("text", "Column holding the review text.")
    label_column: str = opt("label", "Column holding the label (0..K-1, a label name, or a ClassLabel matched by name).")
    force: bool = opt(False, "Rebuild even if this exact dataset is cached.", flags=("--force",))
    subset: str | None = opt(None, "Hub dataset configuration (datasets.load_dataset's second argument), e.g. "
                                   "--data glue --subset sst2.")
    splits: str = opt("", "Which dataset split feeds train/validation/test, e.g. validation=test,test=none (default: "
                          "the same names; none drops test, or carves validation from train).")
    validation_fraction: float = opt(0.1, "Without a validation split: share of each class of train held out as validation.")
    seed: int = opt(42, "Seed of the held-out validation draw and of the --shots draw.")
    shots: int = opt(0, "Few-shot: keep K training examples per class, and K per class of validation (as LM-BFF "
                        "does), drawn with --seed; test stays whole. 0 keeps every row.")
    prompt: PromptConfig = opt(factory=PromptConfig.unresolved, nested=Nested({
        "template": None,
        "label_words": WORDS_HELP + " Default: the class names (a ClassLabel's names or the string labels, after a "
                                    "space), or '" + ",".join(DEFAULT_LABEL_WORDS) + "' for labels 0/1.",
        "label_names": None}))
    """Built from --template, --label-words and --label-names; without words or names, the classes come from
    the data's label names (a ClassLabel's names, or the distinct string labels, sorted)."""

    def __post_init__(self) -> None:
        problems = [f"--max-len must be at least 2, got {self.max_len}"] if self.max_len < 2 else []
        if self.shots < 0:
            problems.append(f"--shots must be 0 (all rows) or a positive number per class, got {self.shots}")
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


FULL_LR = 1e-4
LORA_LR = 5e-4
FULL_BATCH = 64
LORA_BATCH = 32
FEW_SHOT_LR = 3e-5
"""Full fine-tuning's rate for data prepared with --shots. Chosen on Rotten Tomatoes' whole validation split over
three draws of 16 reviews a class (SmolLM2-135M, 30 steps; docs/benchmarks.md): 3e-5 against 1e-4 and 1e-5.
At 1e-4 the model memorises 32 examples in about six steps."""
CPU_MICRO_BATCH_TOKENS = 1024
FEW_SHOT_MIN_STEPS = 30
"""At least this many optimizer steps on data prepared with --shots (two epochs of 32 examples would be two), or one
a training example where there are fewer. Chosen on Rotten Tomatoes' whole validation split, SmolLM2-135M, three
draws each (docs/benchmarks.md): 16 reviews a class (32 rows) 0.822 after 30 steps, 0.820 after 15; 8 a class (16
rows) 0.731 after 30, 0.782 after 15, where 30 steps of 16 examples overfit them."""
FEW_SHOT_CHOOSING_ROWS = 200
"""Data stretched to --min-steps is evaluated about ten times, the best evaluation kept, where validation has at
least this many rows, else once, at the end (the final weights). Chosen on the whole validation splits, SmolLM2-135M,
three draws each (docs/benchmarks.md): the final weights won with a draw's 32 or 128 validation reviews (RT K = 16,
64), were level with 80 sentences (SST-5 K = 16) and lost 3.8 points with 320 (SST-5 K = 64), where the ten
evaluations kept steps 18-24 of 30. Fitted to those cells: a rule of thumb."""
PRETRAINED_EPOCHS = 1.0
"""Fine-tuning pretrained weights: one pass. SmolLM2-135M on Rotten Tomatoes reaches 0.90 validation accuracy in one
epoch (#29), and one epoch is what fits 15 minutes on 2 cores of the slowest bf16 CPU measured (12.5 examples/s)."""
FROM_SCRATCH_EPOCHS = 2.0
"""--from-scratch: random weights need more passes (a 2-layer GPT-2 on Rotten Tomatoes: validation 0.63 after one
epoch, 0.74 after two; docs/benchmarks.md)."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of `rtsent train`."""

    model: str = opt(DEFAULT_MODEL, "Starting model: hub name, local folder, .gguf file, or smollm2 (with --from-scratch: "
                                    "the config to build from).")
    prepared: str | None = opt(None, "Prepared dataset folder or fingerprint (default: the latest).")
    lr: float | None = opt(None, "Peak learning rate (default 1e-4; 5e-4 with --lora; 3e-5 on data prepared with "
                                 "--shots), tuned for the default --batch-size: set it when you change that much.")
    """None is resolved to FULL_LR, or LORA_LR with --lora (a rank-8 adapter needs a larger step: SmolLM2-135M,
    one epoch: LoRA test accuracy 0.793 at 5e-5, 0.859 at 5e-4, docs/benchmarks.md). FULL_LR went from 5e-5 to
    1e-4 with full fine-tuning's batch from 32 to 64 (#19): the same accuracy, 1.4x (GPT-2 small's step) the
    examples a second on CPU; the square-root rule (7.1e-5) lost half a point."""
    batch_size: int | None = opt(None, "Training examples per step, per process (default 64; 32 with --lora). "
                                       "Activation memory grows with it: --micro-batches 2 halves it, same update.")
    """None is resolved to FULL_BATCH, or LORA_BATCH with --lora. A bigger batch spreads the per-parameter work of
    a step (weight casts, AdamW, the gradient norm) over more examples; LoRA has almost none (an adapter's
    parameters), so 64 bought it no speed (27.3 vs 26.8 examples/s on SmolLM2), 3.9 GB more memory and a lower
    accuracy at either learning rate tried (docs/benchmarks.md)."""
    micro_batches: int = opt(1, "Run each step's batch as N micro-batches whose gradients add up (accumulation): "
                                "the same update, activation memory / N, a little slower. A divisor of --batch-size.")
    micro_batch_tokens: int | None = opt(None, "Run a micro-batch longer than N tokens (rows x its longest row) as "
                                               "slices of at most N tokens whose gradients add up: the same update, "
                                               "activation memory bounded by tokens; short batches run whole. Default "
                                               "1024 on CPU, off (0) on a GPU.")
    """None is resolved by device (CPU_MICRO_BATCH_TOKENS on CPU; a GPU keeps its batches whole). SmolLM2-135M's
    longest RT batch (64 x 82 tokens) alone took its peak to 9.1 GB; sliced to 2048 tokens, with the heap kept near
    the first step's footprint (speed.HeapCeiling), an epoch peaked at 6.0-6.6 GB at the same speed; 1024 tokens
    took 24 steps' peak 0.45 GB lower in the same time (Zen 4: 136 s against 140 s; docs/benchmarks.md)."""
    eval_batch_size: int = opt(64, "Examples per evaluation batch.")
    epochs: float | None = opt(None, "Passes over the training split (default 1; 2 with --from-scratch).")
    """None is resolved to PRETRAINED_EPOCHS, or FROM_SCRATCH_EPOCHS with --from-scratch."""
    max_steps: int = opt(-1, "Stop after N steps (overrides --epochs when > 0).")
    min_steps: int | None = opt(None, "At least N optimizer steps, however small the training split (more epochs: "
                                      "evaluated about ten times, the best kept, where validation has "
                                      f"{FEW_SHOT_CHOOSING_ROWS} rows or more, else once, at the end); default for data "
                                      f"prepared with --shots: {FEW_SHOT_MIN_STEPS}, or one a training example where "
                                      "there are fewer; else 0.")
    warmup: float = opt(0.06, "Warm-up: a ratio of all steps when < 1, else steps.")
    weight_decay: float = opt(0.01, "AdamW weight decay.")
    layer_decay: float = opt(1.0, "Layer-wise learning-rate decay d: the last of L blocks trains at --lr x d, the "
                                  "first at --lr x d^L, the embeddings at --lr x d^(L+1) (at --lr where tied to the "
                                  "output layer), the final norm and output layer at --lr. 1: one rate for every "
                                  "weight.")
    eval_every: int | None = opt(None, "Evaluate on validation every N steps (default: once per epoch).")
    save_every: int | None = opt(None, "Checkpoint every N steps, a multiple of --eval-every, and at every new best "
                                       "evaluation (default: at each evaluation).")
    save_limit: int = opt(2, "Checkpoints kept on disk (best and latest included).")
    seed: int = opt(42, "Random seed (weights init, data order).")
    loss: str = opt("lm", "lm: cross-entropy over the vocabulary (seed recipe); label: over the label words only.")
    label_smoothing: float = opt(0.0, "Label smoothing e: the target is 1 - e on the true class and e spread evenly "
                                      "over the classes (with --loss lm, over the classes' words, not the whole "
                                      "vocabulary). 0: off.")
    precision: str = opt("auto", "auto (bf16 where the CPU/GPU is fast at it, fp16 on older GPUs, else fp32), fp32, "
                                 "bf16 or fp16.")
    dropout: float | None = opt(0.0, "Dropout of every dropout layer; 0.1 restores GPT-2's pretraining value (slower "
                                     "on CPU).")
    gradient_checkpointing: bool = opt(False, "Recompute activations to save memory (slower).",
                                       flags=("--gradient-checkpointing",))
    compile: bool = opt(False, "torch.compile the model (lengths bucketed to multiples of 16).", flags=("--compile",))
    run_name: str | None = opt(None, "Name of the run folder (default: run-<date>-<time>).")
    resume: bool = opt(False, "Continue a run (--run-name, default the latest) from its last checkpoint.",
                       flags=("--resume",))
    from_scratch: bool = opt(False, "Random weights from the model's config instead of its weights.",
                             flags=("--from-scratch",))
    config_overrides: str = opt("", "With --from-scratch: config changes such as n_layer=2,n_embd=64,n_head=2 (the "
                                    "config's own key names).")
    early_stopping: int | None = opt(None, "Stop after N evaluations without a better validation accuracy.")
    class_weights: str = opt("none", "auto: weight each class's loss by its inverse frequency in train (imbalanced "
                                     "data); none.")
    report_to: str = opt("none", "Also log to these Trainer integrations: tensorboard (events in "
                                 "runs/<name>/tensorboard), wandb, mlflow, ... (comma-separated, installed ones), or none.")
    plots: bool = opt(True, "Draw the training curves (runs/<name>/plots/training.png).")
    onnx: bool = opt(True, "Also export an ONNX graph of the model (the fast predict engine).")
    int8: bool = opt(True, "With --onnx, also an int8 graph, kept only where it agrees with the fp32 graph on at "
                           "least 99.5% of validation decisions and within 0.5 point of its accuracy.")
    train_layers: int | None = opt(None, "Train only the last N transformer blocks (and the final norm); embeddings and "
                                         "earlier blocks stay frozen, and the backward pass stops there (faster, less "
                                         "memory); with --lora, adapters in those blocks only. Default: every block.")
    lora: bool = opt(False, "Train LoRA adapters (peft) instead of every weight.", flags=("--lora",))
    lora_r: int = opt(8, "LoRA rank.")
    lora_alpha: float = opt(16.0, "LoRA alpha (the update is scaled by alpha/r).")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.")
    lora_targets: str | None = opt(None, "Comma-separated layer names to adapt (default: the model family's, e.g. "
                                         "c_attn for GPT-2, q_proj,v_proj for Llama).")
    lora_export: str = opt("merged", "merged: a plain model folder (no peft needed to load); adapter: the adapter "
                                     "alone, loaded with its base model.")

    def for_data(self, few_shot: bool, train_rows: int | None = None) -> TrainConfig:
        """The options whose defaults depend on the data, resolved once train has opened it (so run.json, the
        card and --resume see the values used): --lr (LORA_LR with --lora, FEW_SHOT_LR on data prepared with
        --shots, else FULL_LR) and --min-steps (on --shots data FEW_SHOT_MIN_STEPS, or train_rows where fewer;
        else 0)."""
        lr = self.lr if self.lr is not None else LORA_LR if self.lora else FEW_SHOT_LR if few_shot else FULL_LR
        few_floor = min(FEW_SHOT_MIN_STEPS, train_rows) if train_rows else FEW_SHOT_MIN_STEPS
        floor = self.min_steps if self.min_steps is not None else few_floor if few_shot else 0
        return dataclasses.replace(self, lr=lr, min_steps=floor)

    def __post_init__(self) -> None:
        if self.batch_size is None:  # resolved at once: it does not depend on the data
            object.__setattr__(self, "batch_size", LORA_BATCH if self.lora else FULL_BATCH)
        if self.epochs is None:  # likewise
            object.__setattr__(self, "epochs", FROM_SCRATCH_EPOCHS if self.from_scratch else PRETRAINED_EPOCHS)
        problems = []
        if self.min_steps is not None and self.min_steps < 0:
            problems.append(f"--min-steps must not be negative, got {self.min_steps}")
        for name in ("lr", "batch_size", "eval_batch_size", "epochs", "save_limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 0:
            problems.append(f"--micro-batch-tokens must be 0 (off) or positive, got {self.micro_batch_tokens}")
        if self.micro_batches <= 0 or self.batch_size % max(1, self.micro_batches):
            problems.append(f"--micro-batches must be a positive divisor of --batch-size {self.batch_size}, "
                            f"got {self.micro_batches}")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup < 0 or self.weight_decay < 0:
            problems.append("--warmup and --weight-decay must not be negative")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
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

    split: str = opt("validation", "validation or test.")
    prepared: str | None = opt(None, "Prepared dataset folder or fingerprint (default: the model's, else the latest).")
    batch_size: int = opt(64, "Examples per batch.")
    precision: str = opt("auto", SCORING_PRECISION_HELP)
    engine: str = opt("auto", ENGINE_HELP)
    output: str | None = opt(None, "Where to write the JSON report (default: next to the model); a file already "
                                   "there is replaced only when it is an rtsent report.")
    bins: int = opt(15, cli=False)
    """Bins of the expected calibration error."""
    data: str | None = opt(None, "Score a labelled .csv/.tsv/.jsonl/.parquet file (or a folder's <split> file) instead of "
                                 "prepared data.")
    text_column: str = opt("text", "With --data: the text column.")
    label_column: str = opt("label", "With --data: the label column (class ids or label names).")
    calibrate: bool = opt(False, "Contextual calibration (content-free inputs 'N/A', '', '[MASK]'); reports accuracy "
                                 "and ECE with and without.", flags=("--calibrate",))
    errors: int | None = opt(None, "Print the N most confident mistakes; write every mistake to <report>-errors.jsonl.")
    plots: bool = opt(True, "Draw the confusion matrix, reliability diagram and probability histogram next to the report.")
    model: str | None = opt(None, "Exported model folder or run name, or a base model for zero-shot (default: the "
                                  "latest run's model); repeat to compare models side by side.", repeat=True)
    """Exported model folder, or a base model for zero-shot; default: the latest run's model (the command
    takes --model repeatedly to compare models: evaluate.compare)."""
    zero_shot: bool = opt(False, "Score a base model (no rtsent.json): with the prompt the prepared data was made "
                                 "with, unless --template/--label-words say otherwise (--data: the default prompt).",
                          flags=("--zero-shot",))
    """--zero-shot: a base model without a prompt given scores prepared data with the prompt the data was
    prepared with (the default prompt for --data)."""
    prompt: PromptConfig | None = opt(None, nested=Nested(
        {"template": None, "label_words": None, "label_names": "comma-separated class names."},
        prefix="Zero-shot: ", base=PromptConfig.unresolved))
    """Prompt for a base model that has no rtsent.json (zero-shot); None: the model's own (or, with --zero-shot,
    the prepared data's)."""

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

    texts: tuple[str, ...] = opt((), "Reviews to classify; '-' reads one per line from stdin.", argument=True)
    file: str | None = opt(None, "txt (one review a line), csv, tsv, jsonl or parquet; '-' reads lines from stdin.",
                           flags=("--file", "-f"))
    text_column: str = opt("text", "Text column of a csv/tsv/jsonl/parquet file.")
    keep_columns: tuple[str, ...] = opt((), "Comma-separated columns of a csv/tsv/jsonl/parquet file to copy into each "
                                            "output row, e.g. id.")
    model: str | None = opt(None, "Exported model folder or run name (default: the latest run's model).")
    format: str = opt("auto", "auto (table for arguments, jsonl for files), table, json, jsonl or csv.")
    batch_size: int = opt(64, "Reviews per batch.")
    precision: str = opt("auto", SCORING_PRECISION_HELP)
    engine: str = opt("auto", ENGINE_HELP)
    max_len: int | None = opt(None, "Longest prompt in tokens (default: the model's training max-len).")
    prompt: PromptConfig | None = opt(None, nested=Nested({"template": None, "label_words": None},
                                                          prefix="Zero-shot base model only: ",
                                                          base=PromptConfig.unresolved))
    """Prompt for a base model that has no rtsent.json (zero-shot); None: the model's own."""

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

    model: str | None = opt(None, "Model folder written by `rtsent train`, or a run name (default: the latest run's "
                                  "model).", argument=True)
    int8: bool = opt(False, "Also write a dynamically quantized int8 graph, checked against the fp32 graph on the "
                            "model's validation split (auto uses it only where it passed).", flags=("--int8",))
    seq_cls: bool = opt(False, "Write a standard *ForSequenceClassification folder instead: transformers' "
                               "text-classification pipeline, vLLM and text-embeddings-inference serve it as it is.",
                        flags=("--seq-cls",))
    output: str | None = opt(None, "With --seq-cls: the folder to write (default: runs/<name>/seq-cls).")

    def __post_init__(self) -> None:
        problems = []
        if self.output and not self.seq_cls:
            problems.append("--output names the folder of --seq-cls; add --seq-cls (ONNX graphs go into the model folder)")
        if self.seq_cls and self.int8:
            problems.append("--int8 adds a graph to the model folder; run it without --seq-cls")
        _check(problems)


@dataclass(frozen=True)
class ReportConfig:
    """Options of `rtsent report`."""

    run: str | None = opt(None, "Run name or folder (default: the latest run).", argument=True)
    format: str = opt("table", "table (print), md or json (write the report file).", flags=("--format",))
    output: str | None = opt(None, "Where to write md/json (default: runs/<name>/report.md|json); a file already "
                                   "there is replaced only when it is an rtsent run report.")


@dataclass(frozen=True)
class RunsConfig:
    """Options of `rtsent runs`."""

    format: str = opt("table", "table or json.", flags=("--format",))


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

    run: str = opt(REQUIRED, "Run name (its exported model) or an exported model folder.", argument=True)
    repo_id: str = opt(REQUIRED, "Hub repository to upload to: user/name or org/name.")
    private: bool = opt(False, "Create the repository as private.", flags=("--private",))

    def __post_init__(self) -> None:
        _check([] if self.repo_id.strip() else ["--repo-id must not be empty"])


@dataclass(frozen=True)
class ServeConfig:
    """Options of `rtsent serve`."""

    model: str | None = opt(None, "Exported model folder or run name (default: the latest run's model).")
    host: str = opt("127.0.0.1", "Interface to listen on (0.0.0.0 opens it to the network).")
    port: int = opt(8000, "TCP port (0 picks a free one).")
    engine: str = opt("auto", ENGINE_HELP)
    precision: str = opt("auto", SCORING_PRECISION_HELP)
    max_batch_size: int = opt(32, "Most texts scored together in one forward pass; concurrent requests are gathered up to this.")
    max_wait_ms: float = opt(5.0, "How long a request waits for others to join its batch.")
    max_queue: int = opt(256, "Requests waiting for the model before new ones get 429 (with Retry-After).")
    max_texts: int = opt(64, "Most texts in one request (413 beyond).")
    max_body_bytes: int = opt(1_000_000, "Largest request body in bytes (413 beyond).")
    timeout_s: float = opt(30.0, "Seconds before a request is answered 504.")

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


PROMPT_STORED = ("template", "label_words")
"""The PromptConfig fields every stored prompt has; the others (later ones) take their default where absent."""


def prompt_from_dict(data: dict[str, Any]) -> PromptConfig:
    """Rebuild a PromptConfig from its to_dict() form (as stored in manifests and rtsent.json); KeyError when a
    field every stored prompt has is missing."""
    given = {f.name: data[f.name] for f in dataclasses.fields(PromptConfig)
             if f.name in PROMPT_STORED or data.get(f.name) is not None}
    return PromptConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
