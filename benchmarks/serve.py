"""`rtsent serve` under load against `rtsent predict --file` on the same texts and model, in the same run.

    python benchmarks/serve.py [--requests 2000] [--concurrency 32] [--rounds 1] [--time-limit 600]
        [--server-options ';--max-wait-ms 20']

Model: a GPT-2-small-shaped folder with random weights (benchmarks/make_gpt2_small.py; 124 M parameters,
the real GPT-2 tokenizer) plus an rtsent.json with the default prompt, so that both commands load it as an
exported model; speed depends on the architecture only. Texts: the Rotten Tomatoes validation split,
cycled to `--requests` texts. The server listens on 127.0.0.1 only; `--concurrency` httpx async clients
send one review per request until all are answered (bounded by `--time-limit`).

Each round times `predict --file` (reviews/s after the model is loaded, as the command reports), then the
server once per option set (requests answered / wall time of the load, after /health is 200), then
`predict --file` again; the ratio is the server's rate over the mean of the two predict rates around it.
Results: benchmarks/out/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ENV, OUT, ROOT, gpt2_small_scorer, predict_stats, write_report  # noqa: E402


def servable_model() -> Path:
    """GPT-2-small random weights + an rtsent.json with the default prompt (what `rtsent train` exports)."""
    return gpt2_small_scorer(OUT / "gpt2-small-serve", "random weights for the serving benchmark; predictions are meaningless")


def texts(n: int) -> list[str]:
    import pyarrow.parquet as pq

    pool = pq.read_table(DATA / "validation.parquet").column("text").to_pylist()
    return [pool[i % len(pool)] for i in range(n)]


def rtsent(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rtsent", *args], cwd=str(ROOT),
                            env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)}, **kwargs)


def predict_rate(model: Path, file: Path) -> float:
    proc = rtsent("predict", "--file", str(file), "--model", str(model), "--format", "jsonl",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    found = predict_stats(err)  # the command's own timing, model load excluded
    if proc.returncode or not found:
        raise SystemExit(f"predict failed: {err}")
    return found["reviews"] / found["seconds"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def load(url: str, items: list[str], concurrency: int, time_limit: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    cursor = iter(range(len(items)))
    deadline = time.perf_counter() + time_limit

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in cursor:
            if time.perf_counter() > deadline:
                errors.append("time limit")
                return
            started = time.perf_counter()
            try:
                response = await client.post("/predict", json={"inputs": items[i]})
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "seconds": seconds,
            "per_second": len(latencies) / seconds, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def serve_round(model: Path, items: list[str], concurrency: int, time_limit: float, options: list[str]) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = rtsent("serve", "--model", str(model), "--port", str(port), *options, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        result = asyncio.run(load(url, items, concurrency, time_limit))
        metrics = httpx.get(url + "/metrics").text
        count = float(re.search(r"^rtsent_batch_size_count (\S+)$", metrics, re.M).group(1))
        total = float(re.search(r"^rtsent_batch_size_sum (\S+)$", metrics, re.M).group(1))
        result["mean_batch"] = total / count
    finally:
        server.send_signal(signal.SIGTERM)
        result_code = server.wait(60)
    result["exit_code"] = result_code
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="predict, the server(s), predict: this many times")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds a load may take before it is cut off")
    ap.add_argument("--server-options", default="",
                    help="';'-separated serve option sets, each timed in every round ('' = the defaults), "
                         "e.g. ';--max-wait-ms 20'")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model = servable_model()
    items = texts(args.requests)
    file = OUT / "serve-texts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": items}), file)
    variants = [v.strip() for v in args.server_options.split(";")]
    rows = []
    for r in range(1, args.rounds + 1):
        # predict before and after the server (A-B-A): load from other jobs drifts over minutes
        before = predict_rate(model, file)
        served = [serve_round(model, items, args.concurrency, args.time_limit, v.split()) for v in variants]
        after = predict_rate(model, file)
        for options, result in zip(variants, served):
            result.update(round=r, options=options or "defaults", predict_before_after=[before, after],
                          predict_per_second=(before + after) / 2, ratio=result["per_second"] / ((before + after) / 2))
            rows.append(result)
            print(json.dumps(result), flush=True)
    load_avg = os.getloadavg()  # other jobs share the cores: the ratio of each round is the figure to read
    lines = ["| round | serve options | predict --file reviews/s (before, after) | serve requests/s | serve / predict "
             "| errors | p50 ms | p99 ms | mean batch |", "| --- " * 9 + "|"]
    for x in rows:
        b, a = x["predict_before_after"]
        lines.append(f"| {x['round']} | {x['options']} | {x['predict_per_second']:.1f} ({b:.1f}, {a:.1f}) | "
                     f"{x['per_second']:.1f} | {x['ratio']:.0%} | {x['errors']} | {x['p50_ms']:.0f} | "
                     f"{x['p99_ms']:.0f} | {x['mean_batch']:.1f} |")
    write_report("serve", {"model": str(model), "requests": args.requests, "concurrency": args.concurrency,
                           "rows": rows, "load_average": load_avg}, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"load average {load_avg[0]:.1f}")


if __name__ == "__main__":
    main()
