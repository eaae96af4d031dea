"""Shared helpers for the benchmarks: environment, the GPT-2-small folders, child processes with per-process peak
RSS, step timing, a log line."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # a script's own process imports this checkout's rtsent, as `python -m rtsent` does
    sys.path.insert(1, str(ROOT))
OUT = HERE / "out"
DATA = Path(os.environ.get("RTSENT_BENCH_DATA", "/work/shared/data/rotten_tomatoes"))
TOKENIZER = os.environ.get("RTSENT_BENCH_TOKENIZER", "/work/shared/models/gpt2-tokenizer")

ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


GPT2_SMALL = OUT / "gpt2-small"
# GPT-2's ids of " negative" and " positive", the default prompt's label words.
GPT2_LABEL_IDS = [4633, 3967]


def log(msg: str) -> None:
    """A time-stamped progress line on stderr (stdout is kept for a worker's JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rtsent_cmd(*args: str) -> list[str]:
    """The argv of an rtsent command, run by this Python (python -m rtsent)."""
    return [sys.executable, "-m", "rtsent", *args]


# ----------------------------------------------------------------------------------------------- GPT-2 small
def gpt2_small(out: Path = GPT2_SMALL, tokenizer: str = TOKENIZER, overrides: str = "", seed: int = 0) -> Path:
    """A GPT-2-small-shaped folder (`GPT2Config()` defaults, 124 M parameters) with random weights and the real
    GPT-2 tokenizer: config.json, model.safetensors and the tokenizer, what `--model` expects. Skipped when the
    folder already has weights for the same config; returns it. (No pretrained GPT-2 weights are available
    offline; speed and memory depend on the architecture only.)"""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    config = GPT2Config()
    if overrides:
        config.update_from_string(overrides)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        saved = GPT2Config.from_pretrained(out)
        if all(getattr(saved, k) == getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")):
            return out
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(str(out))
    return out


def gpt2_small_in_child(out: Path = GPT2_SMALL) -> Path:
    """gpt2_small() in a child process (make_gpt2_small.py), so that the calling process never imports torch: a
    forked child's peak RSS starts at its parent's."""
    if not (out / "model.safetensors").is_file():
        log(f"building a random-weight GPT-2 small in {out}")
        check(run_child([sys.executable, str(HERE / "make_gpt2_small.py"), "--out", str(out)]), "make_gpt2_small")
    return out


def gpt2_small_scorer(folder: Path, note: str, base: Path = GPT2_SMALL) -> Path:
    """The GPT-2-small folder as rtsent exports a model: its files (hard links to those of `base`, built if missing)
    plus an rtsent.json with the default prompt, so that predict, evaluate and serve score with it."""
    base = gpt2_small(base)
    if not (folder / "rtsent.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for f in base.iterdir():
            if f.is_file() and not (folder / f.name).exists():
                os.link(f, folder / f.name)
        from rtsent.config import PromptConfig, to_dict

        meta = {"prompt": to_dict(PromptConfig()), "label_ids": GPT2_LABEL_IDS, "max_len": 128, "note": note}
        (folder / "rtsent.json").write_text(json.dumps(meta, indent=2))
    return folder


def gpt2_small_config(out: Path, tokenizer: str = TOKENIZER) -> Path:
    """A GPT-2 folder without weights: `GPT2Config()` and the real tokenizer, for `rtsent train --from-scratch`
    (with --config-overrides for a smaller model)."""
    from transformers import AutoTokenizer, GPT2Config

    out.mkdir(parents=True, exist_ok=True)
    GPT2Config().save_pretrained(str(out))
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(str(out))
    return out


# ----------------------------------------------------------------------------------------------- rtsent's figures
def predict_stats(stderr: str) -> dict[str, Any]:
    """The figures of the line `rtsent predict --file` ends with, "N reviews in S s (R reviews/s; model loaded in
    L s)": the scoring time excludes the model load. rtsent writes these nowhere else (no JSON), so this is the
    one place that reads a human line; {} when the line is missing."""
    import re

    m = re.search(r"(\d+) reviews in ([\d.]+) s \((\d+) reviews/s; model loaded in ([\d.]+) s\)", stderr)
    if not m:
        return {}
    return {"reviews": int(m.group(1)), "seconds": float(m.group(2)), "reviews_per_s": int(m.group(3)),
            "load_s": float(m.group(4))}


def write_report(name: str, record: Any, markdown: str | None = None) -> Path:
    """A suite's results: benchmarks/out/<name>.json (every raw figure, indented) and, given its tables,
    <name>.md beside it. Returns the JSON file."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=2))
    if markdown is not None:
        (OUT / f"{name}.md").write_text(markdown)
    return OUT / f"{name}.json"


# ----------------------------------------------------------------------------------------------- processes
def self_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(argv: list[str], env: dict[str, str] | None = None, stdin: Any = None, stdout: Any = None,
              timeout: float | None = None) -> dict[str, Any]:
    """Run a command; returns wall seconds, its own peak RSS (os.wait4, per child) and its exit code.

    stdout is captured (unless given) and, when its last line is JSON, parsed into "result".
    """
    full_env = {**os.environ, **ENV, **(env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=full_env, stdin=stdin, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(ROOT))
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    import threading

    def pump(stream, sink):
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    threads = []
    if proc.stdout is not None:
        threads.append(threading.Thread(target=pump, args=(proc.stdout, out_chunks), daemon=True))
    threads.append(threading.Thread(target=pump, args=(proc.stderr, err_chunks), daemon=True))
    for t in threads:
        t.start()
    deadline = None if timeout is None else started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    out = b"".join(out_chunks).decode("utf-8", "replace")
    err = b"".join(err_chunks).decode("utf-8", "replace")
    result = None
    lines = [l for l in out.strip().splitlines() if l.strip()]
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    return {"argv": argv, "rc": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "result": result, "stdout": out, "stderr": err}


def check(child: dict[str, Any], what: str) -> dict[str, Any]:
    if child["rc"] != 0:
        sys.stderr.write(child["stderr"][-4000:] + "\n")
        raise SystemExit(f"{what} failed (exit {child['rc']}): {' '.join(child['argv'])}")
    return child


def emit(result: dict[str, Any]) -> None:
    """A worker's last stdout line: its result as JSON (its own peak RSS included)."""
    result.setdefault("peak_rss_mb", round(self_peak_rss_mb(), 1))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


class StepTimer:
    """A TrainerCallback (built lazily) recording the wall time of every optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._t = None

            def on_step_begin(self, args, state, control, **kw):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if self._t is not None:
                    self.times.append(time.perf_counter() - self._t)
                    self._t = None

            def steady(self, skip: int) -> list[float]:
                return self.times[skip:] if len(self.times) > skip else self.times[-1:]

        return _Timer()


def cpu_description() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
        flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
        info["model"] = model
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx_bf16"] = "amx_bf16" in flags
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["ram_gb"] = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info
