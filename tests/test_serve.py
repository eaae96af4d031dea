"""`rtsent serve`: a real server in a subprocess on a free 127.0.0.1 port, spoken to over HTTP with httpx.

Slow or failing scoring is injected with RTSENT_SERVE_DELAY_S / RTSENT_SERVE_FAIL_ON (rtsent/faults.py);
everything else is the code path a user gets.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

TEXTS = ["great wonderful movie", "awful boring plot", "the film is charming and superb", "dull tedious lifeless story"]
LONG = "awful boring dull " * 300  # ~5,400 characters, far beyond the tiny model's 32-token max-len


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtsent", "serve", "--model", str(model), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server not healthy within 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(trained):
    return trained[1].model_dir


@pytest.fixture(scope="module")
def server(model):
    # fp32: the answers are compared with the model's own fp32 forward (auto may pick a validated int8 graph)
    srv = Server(model, "--max-texts", "8", "--max-body-bytes", "8000", "--max-wait-ms", "100", "--precision", "fp32")
    yield srv
    assert srv.stop(signal.SIGINT) == 0  # Ctrl-C: a clean stop, exit 0


def post(server: Server, body=None, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(server.url + "/predict", content=content, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(server.url + "/predict", json=body, timeout=30)


async def post_many(url: str, bodies: list) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url + "/predict", json=b) for b in bodies))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a sample's values over the series whose labels include `labels`, read with
    prometheus_client's own parser of the exposition format."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    assert values, f"{name} {labels} not in /metrics"
    return sum(values)


def test_predictions_equal_the_predict_command(server, model):
    texts = TEXTS + [LONG]  # the long one is truncated by the prompt encoder on both paths
    cli = subprocess.run([sys.executable, "-m", "rtsent", "predict", *texts, "--model", str(model), "--format", "json",
                          "--precision", "fp32"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert {row["label"] for row in expected} == {"negative", "positive"}  # a model that tells the two apart

    response = post(server, {"inputs": texts})
    assert response.status_code == 200, response.text
    got = response.json()
    assert len(got) == len(texts)
    for row, want in zip(got, expected):
        assert [r["label"] for r in row] == sorted(want["probabilities"], key=want["probabilities"].get, reverse=True)
        assert row[0]["label"] == want["label"]
        for entry in row:
            assert entry["score"] == pytest.approx(want["probabilities"][entry["label"]], abs=1e-5)


def test_single_string_and_top_k(server):
    single = post(server, {"inputs": TEXTS[0]}).json()
    listed = post(server, {"inputs": [TEXTS[0]]}).json()
    assert single == listed  # one review, one list of classes, as the Inference API answers: [[...]]
    assert len(single[0]) == 2 and set(single[0][0]) == {"label", "score"}
    top1 = post(server, {"inputs": TEXTS[:2], "parameters": {"top_k": 1}}).json()
    assert [row[0]["label"] for row in top1] == [r[0]["label"] for r in post(server, {"inputs": TEXTS[:2]}).json()]
    assert all(len(row) == 1 for row in top1)
    assert len(post(server, {"inputs": "fine", "parameters": {"top_k": None}}).json()[0]) == 2


def test_huggingface_inference_client_gets_every_class(server, model, monkeypatch):
    """huggingface_hub's own InferenceClient against the server's URL, as a user would point it there."""
    from huggingface_hub import InferenceClient, constants

    # The suite runs with HF_HUB_OFFLINE=1, which makes the client refuse every URL; it talks to 127.0.0.1 only.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(model=server.url + "/predict")
    got = client.text_classification(TEXTS[2])
    expected = _probabilities(model, [TEXTS[2]])[0]
    assert sorted(e.label for e in got) == ["negative", "positive"]  # every class, not the first one only
    assert [e.score for e in got] == sorted((e.score for e in got), reverse=True)
    for element in got:
        assert element.score == pytest.approx(expected[element.label], abs=1e-5)
    top = client.text_classification(TEXTS[2], top_k=1)
    assert [e.label for e in top] == [got[0].label]


def test_function_to_apply_gives_the_calibrated_logits_or_their_sigmoid(server, model):


    meta = json.loads((model / "rtsent.json").read_text())
    t = meta["calibration"]["temperature"]
    probs = _probabilities(model, [TEXTS[1]])[0]
    logits = {row["label"]: row["score"] for row in post(server, {"inputs": TEXTS[1], "parameters": {"function_to_apply": "none"}}).json()[0]}
    sig = {row["label"]: row["score"] for row in post(server, {"inputs": TEXTS[1], "parameters": {"function_to_apply": "sigmoid"}}).json()[0]}
    # softmax of the logits is the calibrated probability; each sigmoid is 1 / (1 + e^-logit)
    assert 1 / (1 + math.exp(logits["negative"] - logits["positive"])) == pytest.approx(probs["positive"], abs=1e-5)
    for label, value in logits.items():
        assert sig[label] == pytest.approx(1 / (1 + math.exp(-value)), abs=1e-6)
    # "none" is the label words' logits of the model's own forward, divided by the fitted temperature
    from conftest import reference_scores

    raw = reference_scores(model, [meta["prompt"]["template"].format(text=TEXTS[1])])[0]
    assert [logits["negative"], logits["positive"]] == pytest.approx(list(raw / t), abs=1e-4)


def test_classify_speaks_vllms_dialect(server, model):
    from transformers import AutoTokenizer

    texts = [TEXTS[0], TEXTS[1], LONG]
    response = httpx.post(server.url + "/classify", json={"model": "any-name", "input": texts}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["id"].startswith("classify-") and isinstance(body["created"], int)
    assert body["model"] == "tiny"  # the run's name, never the server's local path
    expected = _probabilities(model, texts)
    meta = json.loads((model / "rtsent.json").read_text())
    names = meta["prompt"]["label_names"]
    for i, row in enumerate(body["data"]):
        assert row["index"] == i and row["num_classes"] == 2
        assert row["probs"] == pytest.approx([expected[i][n] for n in names], abs=1e-5)  # class-id order
        assert row["label"] == max(expected[i], key=expected[i].get)
    # Usage counts the prompt tokens: the template around each review, the long one cut to max-len.
    tok = AutoTokenizer.from_pretrained(str(model))
    lengths = [min(len(tok(meta["prompt"]["template"].format(text=t))["input_ids"]), meta["max_len"]) for t in texts]
    assert body["usage"] == {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths), "completion_tokens": 0,
                             "prompt_tokens_details": None}
    one = httpx.post(server.url + "/classify", json={"input": TEXTS[0], "use_activation": False}, timeout=30).json()
    logits = one["data"][0]["probs"]
    assert 1 / (1 + math.exp(logits[0] - logits[1])) == pytest.approx(expected[0][names[1]], abs=1e-5)


@pytest.mark.parametrize("body, status, words", [
    ({"input": []}, 422, ["input is an empty list"]),
    ({"input": ["good", " "]}, 422, ["input[1] is empty"]),
    ({"input": [1, 2, 3]}, 422, ["input[0]"]),
    ({"model": "m"}, 422, ["input: Field required"]),
    ({"input": "good", "truncate_prompt_tokens": 4}, 422, ["truncate_prompt_tokens", "max-len of 32"]),
    ({"input": ["good"] * 9}, 413, ["9 texts"]),
])
def test_bad_classify_requests_name_the_field(server, body, status, words):
    response = httpx.post(server.url + "/classify", json=body, timeout=30)
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"]


def _probabilities(model, texts: list[str]) -> list[dict[str, float]]:
    """What `rtsent predict` answers for the texts (its own process), by label."""
    cli = subprocess.run([sys.executable, "-m", "rtsent", "predict", *texts, "--model", str(model), "--format", "json",
                          "--precision", "fp32"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    return [row["probabilities"] for row in json.loads(cli.stdout)]


def test_health_info_metrics_docs(server, model):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    meta = json.loads((model / "rtsent.json").read_text())
    assert info["label_names"] == meta["prompt"]["label_names"] and info["template"] == meta["prompt"]["template"]
    # bulk scoring in fp32 on a CPU: the fp32 graph, whatever the CPU (torch only for bf16/fp16 or a GPU)
    assert info["engine"] == "onnx" and info["precision"] == "fp32" and info["metrics"]["best"] == meta["best"]
    assert info["engine_choice"]["engine"] == "onnx" and "bulk scoring" in info["engine_choice"]["reason"]
    assert info["limits"]["max_texts"] == 8
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/predict" in httpx.get(server.url + "/openapi.json").json()["paths"]
    text = httpx.get(server.url + "/metrics").text
    assert "# TYPE rtsent_request_duration_seconds histogram" in text
    assert metric(text, "rtsent_requests_total", endpoint="/predict", status="200") >= 1
    assert metric(text, "rtsent_model_loaded") == 1 and metric(text, "rtsent_queue_requests") == 0
    assert metric(text, "process_resident_memory_bytes") > 10e6  # the process collector's own metrics


@pytest.mark.parametrize("raw", [b'{"inputs": "ok", "parameters": {"top_k": 1e400}}',
                                 b'{"inputs": "ok", "parameters": {"top_k": NaN}}',
                                 b'{"inputs": "ok", "parameters": {"top_k": -Infinity}}'])
def test_a_non_finite_number_is_a_422_like_any_bad_request(server, raw):
    assert post(server, {"inputs": "fine"}).status_code == 200
    before = metric(httpx.get(server.url + "/metrics").text, "rtsent_requests_total", endpoint="/predict")
    response = post(server, content=raw)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "parameters.top_k: Input should be a finite number"
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "rtsent_requests_total", endpoint="/predict", status="422") >= 1
    assert metric(text, "rtsent_requests_total", endpoint="/predict") == before + 1
    assert 'status="500"' not in text


def test_no_answer_gives_away_the_servers_local_paths(server, model):
    info = httpx.get(server.url + "/info").text
    classify = httpx.post(server.url + "/classify", json={"model": "m", "input": ["good"]}, timeout=30).text
    assert json.loads(info)["model"] == "tiny"
    for body in (info, classify):
        assert str(model) not in body and str(model.parent) not in body


@pytest.mark.parametrize("body, content, status, words", [
    ({"inputs": ["good"] * 9}, None, 413, ["9 texts", "limit of 8"]),
    (None, json.dumps({"inputs": "x" * 9000}).encode(), 413, ["8000 bytes"]),
    (None, b'{"inputs": ["good",', 422, ["not valid JSON"]),
    ({"texts": ["good"]}, None, 422, ["inputs: Field required"]),
    ({"inputs": ["good", 3]}, None, 422, ["inputs[1]"]),
    ({"inputs": 3}, None, 422, ["inputs"]),
    ({"inputs": ["good", "  \n"]}, None, 422, ["inputs[1] is empty"]),
    ({"inputs": ""}, None, 422, ["inputs is empty"]),
    ({"inputs": []}, None, 422, ["empty list"]),
    ({"inputs": "good", "parameters": {"top_k": 0}}, None, 422, ["parameters.top_k"]),
    (None, b'{"inputs": "\\ud800"}', 422, ["not valid UTF-8"]),
])
def test_bad_requests_are_refused_with_the_reason(server, body, content, status, words):
    response = post(server, body, content)
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"]
    assert post(server, {"inputs": "still serving"}).status_code == 200


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(server.url + "/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "8000 bytes" in response.json()["error"]


def test_concurrent_requests_are_batched_and_answered_in_order(server):
    before = httpx.get(server.url + "/metrics").text
    bodies = [{"inputs": [TEXTS[i % 4], TEXTS[(i + 1) % 4]]} for i in range(16)]
    responses = asyncio.run(post_many(server.url, bodies))
    alone = {t: post(server, {"inputs": t}).json()[0] for t in TEXTS}
    for body, response in zip(bodies, responses):
        assert response.status_code == 200
        for text, row in zip(body["inputs"], response.json()):
            assert row[0]["label"] == alone[text][0]["label"]
            assert row[0]["score"] == pytest.approx(alone[text][0]["score"], abs=1e-5)
    after = httpx.get(server.url + "/metrics").text
    forwards = metric(after, "rtsent_batch_size_count") - metric(before, "rtsent_batch_size_count")
    texts = metric(after, "rtsent_batch_size_sum") - metric(before, "rtsent_batch_size_sum")
    single = metric(after, "rtsent_batch_size_bucket", le="2.0") - metric(before, "rtsent_batch_size_bucket", le="2.0")
    assert texts == 32 + 4  # the 16 pairs and the 4 single texts, each scored once
    assert forwards < 16 + 4 and single < forwards  # some forward passes held several requests


def test_overload_failure_and_graceful_stop(model):
    """429 when the queue is full, 504 past the deadline, 500 for a failing batch only; then SIGTERM with
    requests in flight: they are answered, new connections are refused, the process exits 0."""
    srv = Server(model, "--max-batch-size", "1", "--max-queue", "2", "--timeout-s", "2.5",
                 env={"RTSENT_SERVE_DELAY_S": "1.0", "RTSENT_SERVE_FAIL_ON": "poison"})

    async def overload(client):
        send = lambda i: asyncio.create_task(client.post(srv.url + "/predict", json={"inputs": f"good {i}"}))
        first = send(0)
        await asyncio.sleep(0.3)  # taken off the queue and being scored (1 s)
        return await asyncio.gather(first, *(send(i) for i in range(1, 4)))

    async def stop_in_flight(client):
        first = asyncio.create_task(client.post(srv.url + "/predict", json={"inputs": "good"}))
        await asyncio.sleep(0.3)
        second = asyncio.create_task(client.post(srv.url + "/predict", json={"inputs": ["fine", "bad"]}))
        await asyncio.sleep(0.3)  # one being scored, one queued: answered at ~1 s and ~2 s
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as fresh:
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                await fresh.get(srv.url + "/health")
        return await asyncio.gather(first, second)

    try:
        # Checked in between, on a fresh connection each: a 500 spoils only its batch.
        def between():
            failed = post(srv, {"inputs": ["good", "poison"]})
            assert failed.status_code == 500 and "injected scoring failure" in failed.json()["error"]
            assert post(srv, {"inputs": "good again"}).status_code == 200
            return httpx.get(srv.url + "/metrics").text

        async def all_phases():
            async with httpx.AsyncClient(timeout=30) as client:
                first = await overload(client)
                text = await asyncio.to_thread(between)
                return first, text, await stop_in_flight(client)

        overloaded, text, stopped = asyncio.run(all_phases())
    finally:
        try:  # no second signal: one arriving after the server returned would meet the default handler
            code = srv.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = srv.stop()
    # One scored at once, two queued (done at 1 s and 2 s; the second at 3 s is past its 2.5 s), one refused.
    assert sorted(r.status_code for r in overloaded) == [200, 200, 429, 504]
    busy = next(r for r in overloaded if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and "capacity" in busy.json()["error"]
    assert "--timeout-s" in next(r for r in overloaded if r.status_code == 504).json()["error"]
    for status in (200, 429, 500, 504):
        assert metric(text, "rtsent_requests_total", status=str(status)) >= 1
    assert [r.status_code for r in stopped] == [200, 200] and len(stopped[1].json()) == 2
    assert code == 0
    assert "Traceback" not in srv.proc.stderr.read()


def test_port_in_use_and_missing_model_are_one_line_errors(model, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "rtsent", "serve", "--model", str(model), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1
    assert busy.stderr.strip().count("\n") == 0 and f"port {port} on 127.0.0.1 is already in use" in busy.stderr
    missing = subprocess.run([sys.executable, "-m", "rtsent", "serve", "--workdir", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no trained model" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0
    broken = tmp_path / "broken-model"  # found, but fails while loading (after the server started)
    broken.mkdir()
    (broken / "rtsent.json").write_text("{")
    failed = subprocess.run([sys.executable, "-m", "rtsent", "serve", "--model", str(broken), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error:") and "rtsent.json is unreadable" in failed.stderr
    bad = subprocess.run([sys.executable, "-m", "rtsent", "serve", "--model", str(model), "--max-batch-size", "0",
                          "--engine", "tpu", "--precision", "fp8"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and all(f in bad.stderr for f in ("--max-batch-size", "--engine", "--precision"))
