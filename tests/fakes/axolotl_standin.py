#!/usr/bin/env python3
"""A stand-in for the `axolotl` executable, behind tunebook's one seam (`$TUNEBOOK_AXOLOTL`, see
runner/train/axolotl.py): it writes, in a fraction of a second, what real Axolotl 0.19 writes that tunebook reads.

    axolotl_standin.py train CONFIG [--launcher python] [-- ...]
        output_dir/: adapter_config.json + adapter_model.safetensors (LoRA/QLoRA) or config.json +
        model.safetensors (full fine-tune), tokenizer files, chat_template.jinja, README.md; checkpoint-N/ folders
        on the Trainer's save schedule (save_steps / save_strategy: epoch / the last step; save_total_limit
        rotates them) each with trainer_state.json (log_history: loss per step, eval_loss per eval) and
        tokens_state.json; the Trainer's metrics dicts, tqdm lines and Axolotl's log lines on stdout.
        With auto_resume_from_checkpoints (or resume_from_checkpoint) and a checkpoint in output_dir it resumes
        from it as Axolotl does: the same log line, log_history continued, steps counted from the checkpoint.
    axolotl_standin.py merge-lora CONFIG
        <output_dir>/merged/: the base model's config, generation config and tokenizer files, and model.safetensors
        (the base's weights shifted by an amount derived from the adapter, so a new adapter is a new merged model).

The formats are the recorded ones in tests/fixtures/axolotl/ (a real `make train RECIPE=ci-mini`, Axolotl 0.19.0:
adapter_config.json, trainer_state.json, tokens_state.json and log excerpts). Weights are tiny dummy tensors
derived from the config, the training data, the base model and the step, so an unchanged re-run gives the same
files (same output hash) and any changed input gives new ones; a resumed run ends with the same files as an
uninterrupted one. A base model whose weights are small (a test's 2-layer model) is copied for full fine-tunes and
merges, so the result loads and generates (the eval stage runs for real on it).

Behaviour on demand (environment):
  TUNEBOOK_STANDIN_CALLS=FILE        append one JSON line per invocation: argv, command, config, pid, sid,
                                     resumed_from, first_step, last_step, global_step, exit
  TUNEBOOK_STANDIN_FAIL_AT=N         `train` dies at step N (after the checkpoints before it were saved) with a
                                     Python traceback in the log, exit code 1
  TUNEBOOK_STANDIN_HANG_AT=N         `train` stops at step N and waits until killed (for kill-and-resume tests)
  TUNEBOOK_STANDIN_FAIL=CMD[,CMD]    these commands (train, merge-lora) fail at once with a traceback, exit 1
  TUNEBOOK_STANDIN_STEP_SECONDS=S    sleep S seconds per step (default 0)
  TUNEBOOK_STANDIN_STEPS_PER_EPOCH=N override the steps-per-epoch estimate (rows / batch, or packed tokens / bin)
  TUNEBOOK_STANDIN_EVAL_LOSSES=a,b,c eval_loss at the 1st, 2nd, ... evaluation (default: a falling curve)

A config naming tunebook's early-stopping plugin (`tunebook_early_stopping`) stops and leaves early_stop.json as
the plugin does in real Axolotl (class EarlyStopping below, on tunebook's own rule).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file, save_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "axolotl"
PREFERENCE = ("dpo", "ipo", "orpo", "kto", "simpo")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")
COPY_LIMIT = 64 * 1024 * 1024  # base weights up to this size are copied (full fine-tune, merge); larger: dummy
# HF Trainer's model card header as Axolotl leaves it in output_dir/README.md (recorded, shortened).
CARD = """---
library_name: {library}
tags:
- axolotl
- base_model:adapter:{base_model}
- lora
- transformers
datasets:
- {dataset_path}
base_model: {base_model}
pipeline_tag: text-generation
model-index:
- name: {output_dir}
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. -->
"""


def stamp() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


def log(level: str, logger: str, msg: str) -> None:
    print(f"[{stamp()}] [{level}] [{logger}] {msg}", flush=True)


def fmt(v) -> str:
    """Values as the Trainer prints them in its dict lines: 4 significant digits, as strings."""
    if isinstance(v, int):
        return v
    return f"{v:.4g}"


def fill(text: str, values: dict) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def traceback_exit(where: str, message: str) -> None:
    print("Traceback (most recent call last):\n"
          f'  File "/usr/lib/python3/site-packages/axolotl/{where}.py", line 1, in <module>\n'
          f"RuntimeError: {message}", flush=True)
    sys.exit(1)


# ------------------------------------------------------------------------------------------------ inputs


def dataset_rows(cfg: dict) -> list[dict]:
    rows = []
    for ds in cfg.get("datasets") or []:
        p = Path(str(ds.get("path", "")))
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows.append(json.loads(line))
    return rows


def file_fingerprint(path: Path) -> bytes:
    """Contents for small files, name and size for large ones (a real base model)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja"):
                h.update(f.name.encode())
                h.update(f.read_bytes() if f.stat().st_size <= COPY_LIMIT else str(f.stat().st_size).encode())
    elif path.is_file():
        h.update(path.read_bytes())
    return h.digest()


def run_seed(cfg: dict) -> bytes:
    """Everything a real training result depends on: the config's settings, the data, the base model (the
    contents, not where they lie: the same recipe and data in another folder train the same weights)."""
    where = ("output_dir", "dataset_prepared_path", "resume_from_checkpoint", "base_model", "lora_model_dir",
             "datasets", "test_datasets")
    keyed = {k: v for k, v in cfg.items() if k not in where}
    for k in ("datasets", "test_datasets"):
        keyed[k] = [{a: b for a, b in ds.items() if a != "path"} for ds in cfg.get(k) or []]
    h = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode())
    for ds in (cfg.get("datasets") or []) + (cfg.get("test_datasets") or []):
        h.update(file_fingerprint(Path(str(ds.get("path", "")))))
    h.update(file_fingerprint(Path(str(cfg.get("base_model", "")))))
    if cfg.get("lora_model_dir"):
        h.update(file_fingerprint(Path(str(cfg["lora_model_dir"]))))
    return h.digest()


def rng(seed: bytes, step: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed + str(step).encode()).digest()[:8], "little"))


# ------------------------------------------------------------------------------------------------ writing


def write_adapter_config(dest: Path, cfg: dict) -> dict:
    """The recorded adapter_config.json with this config's base model and LoRA settings."""
    dest.mkdir(parents=True, exist_ok=True)
    rec = json.loads((FIXTURES / "sft-lora" / "adapter_config.json").read_text())
    rec.update(base_model_name_or_path=str(cfg.get("base_model")), r=int(cfg.get("lora_r") or 8),
               lora_alpha=int(cfg.get("lora_alpha") or 16), lora_dropout=float(cfg.get("lora_dropout") or 0.0))
    if cfg.get("lora_target_modules"):
        rec["target_modules"] = list(cfg["lora_target_modules"])
    (dest / "adapter_config.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
    return rec


def write_adapter(dest: Path, cfg: dict, seed: bytes, step: int) -> None:
    rec = write_adapter_config(dest, cfg)
    g, r = rng(seed, step), rec["r"]
    tensors = {f"base_model.model.model.layers.0.self_attn.{m}_proj.lora_{ab}.weight":
               g.standard_normal((r, 8) if ab == "A" else (8, r)).astype(np.float32)
               for m in ("q", "v") for ab in ("A", "B")}
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})


def shifted_weights(base: Path, dest: Path, g: np.random.Generator) -> None:
    """The base model's weights with a small deterministic shift (loadable), or a dummy when the base is large."""
    src = base / "model.safetensors"
    if src.is_file() and src.stat().st_size <= COPY_LIMIT:
        tensors = load_file(str(src))
        name = sorted(k for k, v in tensors.items() if v.ndim == 1)[:1] or sorted(tensors)[:1]
        for k in name:
            tensors[k] = (tensors[k] + g.standard_normal(tensors[k].shape).astype(tensors[k].dtype) * 1e-3)
        save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    else:
        save_file({"lm_head.weight": g.standard_normal((8, 8)).astype(np.float32)}, str(dest / "model.safetensors"),
                  metadata={"format": "pt"})


def copy_model_files(base: Path, dest: Path, names=("config.json", "generation_config.json") + TOKENIZER_FILES):
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        if (base / n).is_file():
            shutil.copy2(base / n, dest / n)


def write_weights(dest: Path, cfg: dict, seed: bytes, step: int) -> None:
    if cfg.get("adapter"):
        write_adapter(dest, cfg, seed, step)
    else:
        copy_model_files(Path(str(cfg.get("base_model"))), dest, ("config.json", "generation_config.json"))
        shifted_weights(Path(str(cfg.get("base_model"))), dest, rng(seed, step))


def presave(out: Path, cfg: dict, paths: dict) -> None:
    """What Axolotl writes into output_dir before the first step: adapter config, tokenizer, model config."""
    base = Path(str(cfg.get("base_model")))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("adapter"):
        log("INFO", "axolotl.train", f"Pre-saving adapter config to {out}...")
        write_adapter_config(out, cfg)
    log("INFO", "axolotl.train", f"Pre-saving tokenizer to {out}...")
    copy_model_files(base, out, TOKENIZER_FILES)
    if cfg.get("chat_template_jinja"):
        (out / "chat_template.jinja").write_text(str(cfg["chat_template_jinja"]))
    elif (base / "chat_template.jinja").is_file():
        shutil.copy2(base / "chat_template.jinja", out / "chat_template.jinja")
    log("INFO", "axolotl.train", f"Pre-saving model config to {out}...")
    copy_model_files(base, out, ("config.json",))
    (out / "README.md").write_text(fill(CARD, {**paths, "library": "peft" if cfg.get("adapter") else "transformers"}))


def trainer_state(history: list[dict], step: int, epoch: float, total: int, spe: int, cfg: dict) -> dict:
    """trainer_state.json with the recorded file's shape."""
    state = json.loads((FIXTURES / "sft-lora" / "trainer_state.json").read_text())
    state.update(epoch=epoch, global_step=step, log_history=history, max_steps=total,
                 num_train_epochs=math.ceil(total / spe), logging_steps=int(cfg.get("logging_steps") or 1),
                 save_steps=int(cfg.get("save_steps") or 500), train_batch_size=int(cfg.get("micro_batch_size") or 1),
                 eval_steps=int(cfg.get("eval_steps") or 500))
    state["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"] = step >= total
    return state


# ------------------------------------------------------------------------------------------------ train


def schedule(cfg: dict, rows: list[dict]) -> tuple[int, int]:
    """(steps per epoch, total steps) as the Trainer would count them."""
    mbs = int(cfg.get("micro_batch_size") or 1)
    gas = int(cfg.get("gradient_accumulation_steps") or 1)
    override = os.environ.get("TUNEBOOK_STANDIN_STEPS_PER_EPOCH")
    if override:
        spe = int(override)
    elif cfg.get("sample_packing") and not cfg.get("rl"):
        chars = sum(len(json.dumps(r)) for r in rows)
        spe = math.ceil(chars / 4 / (int(cfg.get("sequence_len") or 512) * mbs * gas))
    else:
        spe = math.ceil(len(rows) / (mbs * gas))
    spe = max(1, spe)
    total = int(cfg["max_steps"]) if cfg.get("max_steps") else max(1, math.ceil(float(cfg.get("num_epochs") or 1) * spe))
    return spe, total


def is_save_step(cfg: dict, step: int, spe: int, total: int) -> bool:
    strategy = str(cfg.get("save_strategy") or "steps")
    if strategy == "no":
        return False
    if step >= total:
        return True  # the Trainer always saves at the last step when a save strategy is set
    if strategy == "epoch":
        return step % spe == 0
    every = cfg.get("save_steps")
    if not every and cfg.get("saves_per_epoch"):
        every = max(1, spe // int(cfg["saves_per_epoch"]))
    every = int(every or 500) if not (isinstance(every, float) and every < 1) else max(1, int(every * total))
    return step % every == 0


def is_eval_step(cfg: dict, step: int, spe: int, total: int) -> bool:
    if not (cfg.get("test_datasets") or float(cfg.get("val_set_size") or 0) > 0):
        return False
    strategy = str(cfg.get("eval_strategy") or ("steps" if cfg.get("eval_steps") else "epoch"))
    if strategy == "epoch":
        return step % spe == 0 or step == total
    if strategy == "steps":
        return step % int(cfg.get("eval_steps") or spe) == 0
    return False


def step_entry(cfg: dict, step: int, epoch: float, total: int, seed: bytes) -> dict:
    """One logged step, with the recorded keys (SFT: loss, grad_norm, lr, ppl, memory, tokens; DPO: rewards)."""
    g = rng(seed, step)
    lr0 = float(cfg.get("learning_rate") or 2e-4)
    lr = lr0 * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(1, total)))
    if cfg.get("rl"):
        margin = 0.012 * step + 0.002 * float(g.random())
        e = {"loss": 0.6931 - margin / 2, "grad_norm": 1.2 + 0.4 * float(g.random()), "learning_rate": lr,
             "rewards/chosen": margin / 2, "rewards/rejected": -margin / 2,
             "rewards/accuracies": 1.0 if step > 1 else 0.0, "rewards/margins": margin,
             "logps/chosen": -50.8 + step, "logps/rejected": -61.9 - step}
    else:
        loss = 0.9 + 2.4 * math.exp(-0.35 * (step - 1)) + 0.01 * float(g.random())
        seq, mbs = int(cfg.get("sequence_len") or 512), int(cfg.get("micro_batch_size") or 1)
        e = {"loss": loss, "grad_norm": 0.7 + 0.7 * math.exp(-step), "learning_rate": lr, "ppl": math.exp(loss),
             "memory/max_active (GiB)": 0.0, "memory/max_allocated (GiB)": 0.0,
             "memory/device_reserved (GiB)": 0.0}
        if step > 1:
            e["tokens/train_per_sec_per_gpu"] = 50.0 + float(g.random())
        e["tokens/trainable"] = int(step * seq * mbs * 0.46)
        e["tokens/total"] = step * seq * mbs
    e["epoch"] = epoch
    return e


def eval_entry(n: int, epoch: float) -> dict:
    losses = [float(x) for x in os.environ.get("TUNEBOOK_STANDIN_EVAL_LOSSES", "").split(",") if x.strip()]
    loss = losses[min(n, len(losses) - 1)] if losses else 1.6 + 0.8 * math.exp(-0.8 * n)
    return {"eval_loss": loss, "eval_runtime": 1.52, "eval_samples_per_second": 5.26, "eval_steps_per_second": 1.3,
            "epoch": epoch}


def printed(d: dict) -> str:
    return str({k: (v if k == "step" else fmt(v)) for k, v in d.items() if k != "step"})


class EarlyStopping:
    """What tunebook's early-stopping plugin (runner.train.early_stop_plugin) does inside real Axolotl when the
    config names it: the same rule (runner.early_stopping) judges the validation losses after each evaluation, the
    stop comes after that epoch's checkpoint, and the same record is written."""

    def __init__(self, cfg: dict):
        from runner import early_stopping as es  # tunebook's package: first on PYTHONPATH (runner.train.axolotl)

        self.es, self.settings = es, dict(cfg["tunebook_early_stopping"])
        self.rule, self.planned = es.Rule.from_dict(self.settings), float(cfg.get("num_epochs") or 1)
        self.stopped = False

    def _write(self, history: list[dict], step: int, finished: bool) -> None:
        losses = [h["eval_loss"] for h in history if "eval_loss" in h]
        self.es.write_record(self.settings["record"],
                             self.es.record(losses, self.rule, self.planned, self.stopped, step, finished))

    def evaluated(self, history: list[dict], step: int, total: int) -> bool:
        """After an evaluation (and that epoch's save): does training stop here?"""
        v = self.es.judge([h["eval_loss"] for h in history if "eval_loss" in h], self.rule)
        self.stopped = v.stop and step < total
        if self.stopped:
            print(f"tunebook early stopping: stopping after epoch {v.epoch} of {self.planned:g}: {v.reason}",
                  flush=True)
        self._write(history, step, finished=False)
        return self.stopped

    def finish(self, history: list[dict], step: int) -> None:
        if any("eval_loss" in h for h in history):
            self._write(history, step, finished=True)


def train(cfg: dict, record: dict) -> None:
    out = Path(str(cfg["output_dir"]))
    rows = dataset_rows(cfg)
    paths = {"output_dir": out, "dataset_prepared_path": cfg.get("dataset_prepared_path", ""),
             "dataset_path": (cfg.get("datasets") or [{}])[0].get("path", ""), "base_model": cfg.get("base_model")}
    prelude = (FIXTURES / "sft-lora" / "train.log").read_text().split("[axolotl.train] Pre-saving")[0]
    for line in fill(prelude, paths).splitlines()[:-1]:
        print(line, flush=True)
    spe, total = schedule(cfg, rows)
    seed = run_seed(cfg)
    log("INFO", "axolotl.utils.data.sft", f"Maximum number of steps set at {total}")

    start, history, resumed = 0, [], None
    cks = sorted((p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                 key=lambda p: int(p.name.split("-")[-1])) if out.is_dir() else []
    ck = cfg.get("resume_from_checkpoint") or (str(cks[-1]) if cks and cfg.get("auto_resume_from_checkpoints") else None)
    if ck:
        state = json.loads((Path(ck) / "trainer_state.json").read_text())
        start, history, resumed = int(state["global_step"]), list(state["log_history"]), str(ck)
        if not cfg.get("resume_from_checkpoint"):
            log("INFO", "axolotl.utils.train",
                f"Using auto-resume functionality to resume from checkpoint at {ck}")
    record.update(resumed_from=resumed, first_step=start + 1)
    presave(out, cfg, paths)
    log("INFO", "axolotl.train", "Starting trainer...")
    fail_at = int(os.environ.get("TUNEBOOK_STANDIN_FAIL_AT") or 0)
    hang_at = int(os.environ.get("TUNEBOOK_STANDIN_HANG_AT") or 0)
    pause = float(os.environ.get("TUNEBOOK_STANDIN_STEP_SECONDS") or 0)
    n_evals = sum(1 for h in history if "eval_loss" in h)
    stopping = EarlyStopping(cfg) if cfg.get("tunebook_early_stopping") else None
    t0 = time.time()
    last = start
    for step in range(start + 1, total + 1):
        last = step
        record["last_step"] = step
        if step == fail_at:
            traceback_exit("core/trainers/base", f"stand-in: failing at step {step} (TUNEBOOK_STANDIN_FAIL_AT)")
        if step == hang_at:
            print(f"stand-in: hanging at step {step} until killed (TUNEBOOK_STANDIN_HANG_AT)", flush=True)
            write_record(record)
            while True:
                time.sleep(3600)
        if pause:
            time.sleep(pause)
        epoch = round(step / spe, 4)
        e = step_entry(cfg, step, epoch, total, seed)
        pct = 100 * step // total
        print(f"{pct:3d}%|{'█' * (pct // 10):<10}| {step}/{total} [00:{step:02d}<00:00,  1.00s/it]", flush=True)
        print(printed(e), flush=True)
        history.append({**e, "step": step})
        if is_eval_step(cfg, step, spe, total):
            ev = eval_entry(n_evals, epoch)
            n_evals += 1
            print(printed(ev), flush=True)
            history.append({**ev, "step": step})
        if is_save_step(cfg, step, spe, total):
            d = out / f"checkpoint-{step}"
            log("INFO", "axolotl.core.trainers.base", f"Saving model checkpoint to {d}")
            write_weights(d, cfg, seed, step)
            copy_model_files(out, d, TOKENIZER_FILES + ("chat_template.jinja", "README.md"))
            (d / "trainer_state.json").write_text(json.dumps(trainer_state(history, step, epoch, total, spe, cfg),
                                                              indent=2, sort_keys=True))
            tr = next((h for h in reversed(history) if "tokens/total" in h), None)
            (d / "tokens_state.json").write_text(json.dumps(
                {"total": tr["tokens/total"], "trainable": tr["tokens/trainable"]} if tr else {}))
            limit = int(cfg.get("save_total_limit") or 0)
            kept = sorted((p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                          key=lambda p: int(p.name.split("-")[-1]))
            for old in (kept[:-limit] if limit else []):
                log("INFO", "transformers.trainer", f"Deleting older checkpoint [{old}] due to args.save_total_limit")
                shutil.rmtree(old)
        if stopping and "eval_loss" in history[-1] and stopping.evaluated(history, step, total):
            break
    if stopping:
        stopping.finish(history, last)
    record["global_step"] = last
    losses = [h["loss"] for h in history if "loss" in h]
    end = {"train_runtime": max(time.time() - t0, 0.01), "train_samples_per_second": 0.408,
           "train_steps_per_second": 0.102, "train_loss": sum(losses) / max(1, len(losses)),
           "memory/max_active (GiB)": 0.0, "memory/max_allocated (GiB)": 0.0, "memory/device_reserved (GiB)": 0.0,
           "epoch": round(last / spe, 4)}
    print(printed(end), flush=True)
    log("INFO", "axolotl.train", f"Training completed! Saving trained model to {out}.")
    write_weights(out, cfg, seed, last)
    log("INFO", "axolotl.train", f"Model successfully saved to {out}")


# ------------------------------------------------------------------------------------------------ merge


def merge(cfg: dict, record: dict) -> None:
    out = Path(str(cfg["output_dir"]))
    lora = Path(str(cfg.get("lora_model_dir") or out))
    base = Path(str(cfg.get("base_model")))
    for line in (FIXTURES / "merge-lora" / "train.log").read_text().splitlines():
        if "Copying non-model files" in line:
            break
        print(line, flush=True)
    if not (lora / "adapter_config.json").is_file():
        traceback_exit("cli/merge_lora", f"ValueError: Target directory for LoRA adapter {lora} has no adapter")
    log("INFO", "axolotl.cli.utils.lora_merge", "Copying non-model files to output directory...")
    dest = out / "merged"
    copy_model_files(base, dest)
    if (base / "chat_template.jinja").is_file():
        shutil.copy2(base / "chat_template.jinja", dest / "chat_template.jinja")
    seed = hashlib.sha256(file_fingerprint(lora) + file_fingerprint(base)).digest()
    shifted_weights(base, dest, rng(seed, 0))
    log("INFO", "axolotl.cli.utils.lora_merge", "Applied LoRA to 210/272 tensors")
    record["merged"] = str(dest)


# ------------------------------------------------------------------------------------------------ main


def write_record(record: dict) -> None:
    path = os.environ.get("TUNEBOOK_STANDIN_CALLS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("train", "merge-lora"):
        print(f"axolotl stand-in: unsupported command {' '.join(argv)!r} (train CONFIG | merge-lora CONFIG)",
              file=sys.stderr)
        return 2
    command, config = argv[0], Path(argv[1])
    cfg = yaml.safe_load(config.read_text())
    record = {"argv": argv, "command": command, "config": str(config), "pid": os.getpid(), "sid": os.getsid(0)}
    try:
        if command in (os.environ.get("TUNEBOOK_STANDIN_FAIL") or "").split(","):
            traceback_exit("cli/main", f"stand-in: {command} fails on demand (TUNEBOOK_STANDIN_FAIL)")
        (train if command == "train" else merge)(cfg, record)
    except SystemExit as exc:
        record["exit"] = exc.code
        write_record(record)
        raise
    record["exit"] = 0
    write_record(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
