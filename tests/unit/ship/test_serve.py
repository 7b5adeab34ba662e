"""`tunebook serve` without starting vLLM: the exact server arguments for one and several adapters and a merged
model, the trained chat template and stop tokens it is given, every refusal (gates, bases, templates, ranks, a
port in use, no serve venv), the server records, hot-swap refusals, and stopping a whole process group. Starting
vLLM for real is tests/e2e/test_serve_run.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from runner.chat_template import default_system_prompt, stage_template
from runner.cli.main import main
from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship import hotswap
from runner.ship import serve as S
from runner.ship import serve_state as state
from runner.tokenizer import load_tokenizer
from tests.conftest import CHATML, make_project

# A template that ends assistant turns with <|endoftext|> (id 0 in SmolLM2), not the tokenizer's EOS <|im_end|>.
ENDOFTEXT = CHATML.replace("'<|im_end|>' + '\n'", "'<|endoftext|>' + '\n'")


def recipe(name, base="./models/base", r=16, stages="[sft, merge]", method="lora", template=None):
    axolotl = f"\n    axolotl: {{chat_template: jinja, chat_template_jinja: {json.dumps(template)}}}" if template else ""
    return f"""
    name: {name}
    base_model: {base}
    data: {{train: data/train.jsonl, format: alpaca}}
    training: {{method: {method}, lora: {{r: {r}}}}}
    stages: {stages}{axolotl}
    """


def resolved(root, *names):
    """The recipes as `tunebook serve` resolves them: with the chat-template check, as training does."""
    return [resolve(load_recipe(n, root)) for n in names]


@pytest.fixture
def root(tmp_path, smollm2):
    recipes = {"support": recipe("support"), "billing": recipe("billing", r=64), "tone": recipe("tone", r=24),
               "other": recipe("other", base="./models/other"), "full": recipe("full", method="full", stages="[sft]"),
               "nomerge": recipe("nomerge", stages="[sft]"), "eot": recipe("eot", template=ENDOFTEXT),
               "big": recipe("big", r=128)}
    root = make_project(tmp_path, recipes, {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n'})
    (root / "models").mkdir()
    (root / "models/base").symlink_to(smollm2)
    (root / "models/other").symlink_to(smollm2)  # the same weights in another folder: another base to vLLM
    for name, r in (("support", 16), ("billing", 64), ("tone", 24), ("other", 16), ("nomerge", 16), ("eot", 16),
                    ("big", 128)):
        out = root / "runs" / name / "sft" / "output"
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": r, "peft_type": "LORA"}))
    for name in ("support", "full"):
        d = root / "runs" / name / ("merge/merged" if name == "support" else "sft/output")
        d.mkdir(parents=True, exist_ok=True)
        for f in smollm2.iterdir():  # a whole model's files but the weights (nothing loads them here)
            if f.is_file() and not f.name.endswith(".safetensors"):
                (d / f.name).write_bytes(f.read_bytes())
    return root


def files(root, port):
    return state.ServerFiles.for_port(root, port)


def args_of(root, names, port=8000, host="127.0.0.1", merged=False, extra=None):
    p = S.plan(resolved(root, *names), merged=merged)
    return p, S.vllm_args(p, files(root, port), host, port, extra)


def test_one_adapter(root):
    p, args = args_of(root, ["support"])
    d = root / "runs/_serve/8000"
    assert args == [
        "--model", str(root / "models/base"), "--served-model-name", "base", "--dtype", "float32",
        "--chat-template", str(d / "chat_template.jinja"), "--generation-config", str(d / "generation"),
        "--enable-lora", "--lora-modules", f"support={root}/runs/support/sft/output", "--max-lora-rank", "16",
        "--max-loras", "1", "--max-cpu-loras", str(1 + S.HOT_LOAD_ROOM), "--host", "127.0.0.1", "--port", "8000"]


def test_several_adapters_on_one_base(root):
    _, args = args_of(root, ["support", "billing", "tone"], port=8001, host="0.0.0.0",
                      extra=["--max-model-len", "512"])
    i = args.index("--lora-modules")
    assert args[i + 1:i + 4] == [f"support={root}/runs/support/sft/output", f"billing={root}/runs/billing/sft/output",
                                 f"tone={root}/runs/tone/sft/output"]
    assert args[i + 4:] == ["--max-lora-rank", "64", "--max-loras", "3", "--max-cpu-loras", str(3 + S.HOT_LOAD_ROOM),
                            "--host", "0.0.0.0", "--port", "8001", "--max-model-len", "512"]


def test_serves_the_trained_template_and_stops_at_its_end_of_turn(root, smollm2):
    """The template written for vLLM is the one the stage trained with (runner.chat_template.stage_template), and
    the generation config's eos_token_id, which vLLM adds to every request's stop ids, holds its end-of-turn
    token, also where that is not the tokenizer's EOS."""
    tok = load_tokenizer(str(smollm2))
    for name, eot in (("support", "<|im_end|>"), ("eot", "<|endoftext|>")):
        [res] = resolved(root, name)
        p = S.plan([res])
        stage = next(s for s in res.stages if s.name == "sft")
        trained = stage_template(stage.config, tok)[0] or tok.chat_template
        assert p.template == trained and p.end_of_turn == eot
        # not the base tokenizer's own: SmolLM2's injects a default system prompt, which training removed
        assert p.template != tok.chat_template and default_system_prompt(tok, p.template) is None
        eot_id = tok.convert_tokens_to_ids(eot)
        assert eot_id in p.stop_ids and tok.eos_token_id in p.stop_ids
        assert p.generation_config["eos_token_id"] == p.stop_ids
    assert S.plan(resolved(root, "eot")).stop_ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]


def test_rank_rounds_up_to_a_vllm_value():
    assert [S.max_lora_rank([r]) for r in (4, 8, 9, 24, 64, 100, 300)] == [8, 8, 16, 32, 64, 128, 320]
    with pytest.raises(TunebookError, match="maximum"):
        S.max_lora_rank([1024])


def test_hub_base_keeps_its_name():
    assert S.base_name("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert S.base_name("/models/smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_merged_model(root):
    p, args = args_of(root, ["support"], merged=True, port=9000)
    assert args[:6] == ["--model", str(root / "runs/support/merge/merged"), "--served-model-name", "support",
                        "--dtype", "float32"]
    assert "--enable-lora" not in args and args[-4:] == ["--host", "127.0.0.1", "--port", "9000"]
    # a full fine-tune is served as is
    assert S.plan(resolved(root, "full"), merged=True).model == str(root / "runs/full/sft/output")


@pytest.mark.parametrize("names, kw, words", [
    (["support", "other"], {}, "share one base model"),
    (["support", "eot"], {}, "different chat templates"),
    (["support", "billing"], {"merged": True}, "several merged models"),
    (["full"], {}, "no LoRA adapter"),
    (["nomerge"], {"merged": True}, "no merge stage"),
    (["billing"], {"merged": True}, "no merged model at"),
    (["support", "support"], {}, "named twice"),
])
def test_refusals(root, names, kw, words):
    with pytest.raises(TunebookError, match=words):
        S.plan(resolved(root, *names), **kw)


def test_refuses_a_run_whose_gate_failed(root):
    (root / "runs/support/tunebook.lock").write_text(json.dumps({"stages": {"eval": {
        "gate": "failed", "failed_gates": ["held-out contains = 0.2, needs >= 0.8"]}}}))
    with pytest.raises(TunebookError, match="refusing to serve support.*contains = 0.2"):
        S.plan(resolved(root, "support"))


def test_untrained_recipe(root):
    (root / "runs/tone/sft/output/adapter_config.json").unlink()
    with pytest.raises(TunebookError) as e:
        S.plan(resolved(root, "tone"))
    assert "no trained adapter" in str(e.value) and "make train RECIPE=tone" in str(e.value)
    assert S.plan(resolved(root, "tone"), require_files=False).served[0].recipe == "tone"  # --dry-run shows it


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """`tunebook --root ROOT ARGS` in this process (as the console script runs it), with extra environment."""
    def run(root, *args, env=None) -> Ran:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        code = main(["--root", str(root), *args])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)
    return run


def fake_venv(tmp_path):
    """A folder that passes for the serve venv (its python exists); nothing in these tests starts it."""
    v = tmp_path / "venv-serve"
    (v / "bin").mkdir(parents=True)
    (v / "bin/python").symlink_to(sys.executable)
    return v


def test_dry_run_prints_the_command_and_writes_nothing(root, tmp_path, cli):
    r = cli(root, "serve", "support", "--port", "8123", "--dry-run", env={"TUNEBOOK_SERVE_VENV": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    argv = r.stdout.strip().split(" ")
    assert argv[:3] == [str(tmp_path / "none/bin/python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[3:] == S.vllm_args(S.plan(resolved(root, "support")), files(root, 8123), "127.0.0.1", 8123)
    assert not (root / "runs/_serve").exists()


def test_without_the_serve_venv_says_how_to_get_it(root, tmp_path, cli):
    r = cli(root, "serve", "support", env={"TUNEBOOK_SERVE_VENV": str(tmp_path / "none")})
    assert r.returncode == 2
    assert "vLLM is not installed" in r.stderr and "make serve-venv" in r.stderr and "Traceback" not in r.stderr


def test_refuses_a_port_in_use(root, tmp_path, cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli(root, "serve", "support", "--port", str(port), env={"TUNEBOOK_SERVE_VENV": str(fake_venv(tmp_path))})
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr and "Traceback" not in r.stderr
    assert not (root / f"runs/_serve/{port}/server.json").exists()


def test_port_zero_picks_a_free_one():
    port = S.free_port("127.0.0.1")
    S.check_port("127.0.0.1", port)  # free: no error


# ---------------------------------------------------------------------------------------------- records, hot-swap


def record(root, port=8000, pid=None, **kw) -> state.ServerRecord:
    p = S.plan(resolved(root, "support"))
    rec = state.ServerRecord(url=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port, pid=pid or os.getpid(),
                             tunebook_pid=pid or os.getpid(), model=p.model, name=p.name, merged=False,
                             max_lora_rank=p.max_lora_rank, template_sha256=S.sha256_json(p.template),
                             end_of_turn=p.end_of_turn, stop_ids=p.stop_ids, dtype=p.dtype,
                             adapters={"support": str(root / "runs/support/sft/output")})
    for k, v in kw.items():
        setattr(rec, k, v)
    state.write(files(root, port).record, rec)
    return rec


def test_records_find_the_running_server(root):
    with pytest.raises(TunebookError, match="no `tunebook serve` is running"):
        state.find(root)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record(root, 8001, pid=dead.pid)  # its tunebook is gone: stale, ignored
    with pytest.raises(TunebookError, match="no `tunebook serve` is running"):
        state.find(root)
    record(root, 8000)
    path, rec = state.find(root)
    assert rec.port == 8000 and path == files(root, 8000).record
    assert state.find(root, "http://127.0.0.1:8000/v1/")[1].port == 8000
    assert state.find(root, "http://127.0.0.1:9999") is None
    record(root, 8002)
    with pytest.raises(TunebookError, match="several servers are running"):
        state.find(root)
    state.remove(files(root, 8002).record, pid=12345)  # not that server's vLLM: kept
    assert files(root, 8002).record.exists()
    state.remove(files(root, 8002).record, pid=os.getpid())
    assert not files(root, 8002).record.exists()


@pytest.mark.parametrize("name, words", [
    ("other", "trained on .*models/other, but the server .* serves .*models/base"),
    ("big", "rank 128 is above the server's --max-lora-rank 16"),
    ("eot", "another chat template"),
    ("support", "already serves support"),
])
def test_add_refusals(root, name, words):
    """Refused from the server's record, before vLLM is asked (nothing listens on the recorded URL)."""
    record(root, S.free_port("127.0.0.1"))
    with pytest.raises(TunebookError, match=words):
        hotswap.add(resolved(root, name)[0])


def test_add_to_a_merged_server_and_cli_mix_refused(root, cli):
    record(root, S.free_port("127.0.0.1"), merged=True)
    with pytest.raises(TunebookError, match="serves a merged model"):
        hotswap.add(resolved(root, "tone")[0])
    r = cli(root, "serve", "support", "--add", "tone")
    assert r.returncode == 2 and "name no recipes" in r.stderr


def test_remove_from_a_server_that_is_gone(root):
    record(root, S.free_port("127.0.0.1"))
    with pytest.raises(TunebookError, match="cannot reach the server"):
        hotswap.remove(root, "support")


# ---------------------------------------------------------------------------------------------- stopping


def test_stop_group_ends_every_process_of_the_group():
    """vLLM's API server starts an engine core and workers in its process group: all of them go."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & trap '' TERM; wait"], start_new_session=True)
    time.sleep(0.5)
    t0 = time.monotonic()
    S.stop_group(proc, grace=2)  # the shell ignores SIGTERM: SIGKILL ends it after the grace period
    assert proc.returncode is not None and time.monotonic() - t0 < 15
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
