"""`tunebook export RECIPE --format gguf|ollama [--quant f16|q8_0|q4_k_m]`: the run's merged model as a GGUF file
for llama.cpp, and an Ollama folder (the GGUF and a Modelfile).

    runs/<recipe>/export/<recipe>-<quant>.gguf        the model (f16: converted; q8_0, q4_k_m: quantized from f16)
    runs/<recipe>/export/<recipe>-<quant>.gguf.json   what it was made from (the incremental check reads it)
    runs/<recipe>/export/<recipe>-ollama/             Modelfile, <recipe>-<quant>.gguf (a hard link), README.md

The merged model (runner.recipe.shipped) is handed to llama.cpp's converter (runner.ship.llamacpp) with its
tokenizer set to what training used: the trained chat template (runner.chat_template.stage_template) as
`tokenizer.chat_template`, and the template's end-of-turn token as EOS, so llama.cpp stops where the model
learned to stop. Each file is checked before it is renamed into place: its metadata carries that template and
EOS id, llama.cpp tokenizes a rendered prompt exactly as the trained tokenizer does, and it ends generation on
the end-of-turn token. A file whose inputs (the merged model's hash, as the lock computes it, the template, the
quantization, the llama.cpp release) are unchanged is kept, not rebuilt.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runner.chat_template import end_of_turn_token, stage_template
from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_dir, atomic_write_json, atomic_write_text, sha256_json
from runner.pipeline.lock import refuse_if_gate_failed
from runner.recipe.resolve import ResolvedRecipe
from runner.recipe.shipped import TrainedModel, has_model, shipped_model
from runner.ship import llamacpp, ollama
from runner.ship.export import eval_results, model_card
from runner.tokenizer import load_tokenizer
from runner.train.stage import output_hash

FORMATS = ("gguf", "ollama")
QUANTS = llamacpp.QUANTS
DEFAULT_QUANT = "f16"  # lossless from the merged weights; q8_0 halves it at a small cost, q4_k_m a quarter
# Files of a model folder that hold the tokenizer: the staged copy gets them from the trained tokenizer instead.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model"}
# Bumped when what this module hands the converter changes: earlier files are then rebuilt.
STAGING_VERSION = 1
PROBE = [{"role": "user", "content": "How many days of paid leave do I get, and who approves them?"}]


@dataclass
class Source:
    """What a GGUF is made from: the shipped model's merged folder and the tokenizer and template it trained with."""

    model: TrainedModel
    merged: Path
    tok: object            # the merged folder's tokenizer (a private copy)
    template: str          # the trained chat template (Jinja)
    end_of_turn: str       # the token that ends an assistant turn in it, e.g. <|im_end|>
    end_of_turn_id: int


def source(res: ResolvedRecipe) -> Source:
    """The merged model to convert; TunebookError (with the fix) when the run has none, is not trained, or a gate
    failed. `res` resolved with the template check (resolve's default), which puts the template fixes training
    used into the stage config."""
    name = res.recipe.name
    model = shipped_model(res, action="export")
    merged = model.merged
    if merged is None:
        raise TunebookError(f"recipe {name} has no merge stage after {model.stage.name}: there is no merged model "
                            "to convert to GGUF",
                            fix=f"Add `merge` to the recipe's stages (e.g. stages: [sft, eval, merge]) and run "
                                f"`make train RECIPE={name}`; or export the adapter (--format adapter).")
    if not has_model(merged) or not res.layout.lock.is_file():
        raise TunebookError(f"no merged model at {os.path.relpath(merged, res.recipe.root)}",
                            fix=f"Run `make train RECIPE={name}` first.")
    refuse_if_gate_failed(res.layout.root, name, "export")
    tok = load_tokenizer(merged, private=True)
    template, _ = stage_template(model.stage.config, tok, f"the tokenizer of {merged}")
    template = template or tok.chat_template
    eot = end_of_turn_token(tok, template)
    if eot is None:
        raise TunebookError(f"the chat template recipe {name} trained with ends assistant turns with no special "
                            "token: llama.cpp and Ollama would not know where an answer ends",
                            fix="Train with a template whose turns end in a special token, e.g. "
                                "axolotl: {chat_template: chatml}.")
    return Source(model, merged, tok, template, eot, tok.convert_tokens_to_ids(eot))


def gguf_path(res: ResolvedRecipe, quant: str) -> Path:
    """runs/<recipe>/export/<recipe>-<quant>.gguf"""
    return res.layout.export_dir / f"{res.recipe.name}-{quant}.gguf"


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _inputs(src: Source, quant: str) -> dict:
    """Everything a GGUF file depends on. The model's hash is train.stage.output_hash, the one the lock records
    for the merge stage's folder (so a re-merged model is a new input)."""
    return {"model": output_hash(src.merged), "template": src.template, "end_of_turn": src.end_of_turn,
            "quant": quant, "llama_cpp_python": llamacpp.VERSION, "converter": str(llamacpp.tools_dir()),
            "staging": STAGING_VERSION}


def _fresh(path: Path, inputs: dict) -> bool:
    try:
        return path.is_file() and json.loads(_record_path(path).read_text())["key"] == sha256_json(inputs)
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temp path beside `path` for a tool to write to; renamed over `path` on success, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _byte_level_bpe(tokenizer_json: dict) -> bool:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    kinds = [pre.get("type")] + [p.get("type") for p in pre.get("pretokenizers") or []]
    return (tokenizer_json.get("model") or {}).get("type") == "BPE" and "ByteLevel" in kinds


def stage_for_converter(src: Source, dest: Path) -> None:
    """A model folder for llama.cpp's converter: the merged model's files (linked) and the trained tokenizer with
    the trained template and EOS = end of turn (the converter reads EOS and the template from these files)."""
    for f in src.merged.iterdir():
        if f.is_file() and f.name not in TOKENIZER_FILES and not f.name.startswith("."):
            (dest / f.name).symlink_to(f.resolve())
    tok = src.tok
    tok.chat_template = src.template
    tok.eos_token = src.end_of_turn
    tok.save_pretrained(dest)
    tj_path = dest / "tokenizer.json"
    if tj_path.is_file():
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
        # transformers' import of a GGUF tokenizer (how .cache/models/smollm2 was made) marks a byte-level BPE with
        # byte_fallback and a SentencePiece-style decoder; llama.cpp's converter then writes it as a SentencePiece
        # ("llama") vocabulary, which tokenizes differently. Byte fallback never fires in a byte-level BPE (every
        # byte is in its vocabulary), so turning it off changes no tokenization and gets the "gpt2" vocabulary.
        if _byte_level_bpe(tj) and tj["model"].get("byte_fallback"):
            tj["model"]["byte_fallback"] = False
            atomic_write_text(tj_path, json.dumps(tj, ensure_ascii=False))


def check_gguf(path: Path, src: Source) -> None:
    """The GGUF carries the trained template and EOS, tokenizes a rendered prompt exactly as the trained tokenizer,
    and ends generation on the end-of-turn token; TunebookError (exit 1) naming the difference otherwise."""
    md = llamacpp.metadata(path)
    problems = []
    if md.get("tokenizer.chat_template") != src.template:
        problems.append("its tokenizer.chat_template is not the trained template")
    if md.get("tokenizer.ggml.eos_token_id") != src.end_of_turn_id:
        problems.append(f"its EOS id is {md.get('tokenizer.ggml.eos_token_id')}, not {src.end_of_turn_id} "
                        f"({src.end_of_turn})")
    prompt = src.tok.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True,
                                         chat_template=src.template)
    expected = src.tok(prompt, add_special_tokens=False)["input_ids"]
    got = llamacpp.probe(path, prompt, src.end_of_turn_id)
    vocab = f"vocabulary type {md.get('tokenizer.ggml.model')}, pre-tokenizer {md.get('tokenizer.ggml.pre')}"
    if "crashed" in got:
        problems.append(f"llama.cpp crashed tokenizing a prompt ({got['crashed']}; {vocab})")
    else:
        if got["ids"] != expected:
            problems.append(f"llama.cpp tokenizes a prompt into {len(got['ids'])} tokens {got['ids'][:12]}..., the "
                            f"trained tokenizer into {len(expected)} {expected[:12]}... ({vocab})")
        if not got["eog"]:
            problems.append(f"llama.cpp does not end generation on {src.end_of_turn}")
    if problems:
        raise TunebookError(f"the GGUF made from {src.merged} does not match the trained model: "
                            + "; ".join(problems), exit_code=1,
                            fix="Report it with the converter's log (runs/<recipe>/export/*.log); the merged model "
                                "itself is fine to serve (--format merged).")


def _build(res: ResolvedRecipe, src: Source, quant: str) -> Path:
    """The GGUF in `quant`, built unless its record says its inputs are unchanged."""
    path = gguf_path(res, quant)
    inputs = _inputs(src, quant)
    if _fresh(path, inputs):
        say(f"export: {path.name} is up to date (same merged model, template and settings)")
        return path
    t0 = time.time()
    if quant == "f16":
        log = path.with_name(path.name + ".log")
        with _temp_beside(path) as tmp:
            staged = path.with_name(f".{path.name}.src.tmp")
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
            try:
                stage_for_converter(src, staged)
                say(f"export: converting {os.path.relpath(src.merged, res.recipe.root)} with llama.cpp's converter")
                llamacpp.convert(staged, tmp, log, "f16")
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            check_gguf(tmp, src)
        how = "converted"
    else:
        f16 = _build(res, src, "f16")
        with _temp_beside(path) as tmp:
            say(f"export: quantizing {f16.name} to {quant} with llama.cpp's quantizer")
            llamacpp.quantize(f16, tmp, quant)
            check_gguf(tmp, src)
        how = f"quantized from {f16.name}"
    secs = round(time.time() - t0, 1)
    atomic_write_json(_record_path(path), {"key": sha256_json(inputs), "inputs": inputs, "seconds": secs,
                                           "bytes": path.stat().st_size})
    say(f"export: {path.name} {how} in {secs} s ({path.stat().st_size / 2**20:.0f} MiB)")
    return path


def export_gguf(res: ResolvedRecipe, quant: str = DEFAULT_QUANT) -> Path:
    """Write runs/<recipe>/export/<recipe>-<quant>.gguf (kept when up to date); return its path."""
    if quant not in QUANTS:
        raise TunebookError(f"unknown quantization '{quant}'", fix=f"Use one of: {', '.join(QUANTS)}.")
    return _build(res, source(res), quant)


def stop_tokens(src: Source) -> list[str]:
    """The tokens a chat must stop on: the template's end of turn, and the EOS when that is another token."""
    return list(dict.fromkeys(t for t in (src.end_of_turn, src.tok.eos_token) if t))


def ollama_modelfile(res: ResolvedRecipe, src: Source, gguf_name: str) -> str:
    """The Modelfile for `gguf_name` (in the same folder), checked by reading it back."""
    turns = ollama.chat_turns(src.tok, src.template)
    stops = stop_tokens(src)
    system = res.data.get("system_prompt")
    comment = (f"{res.recipe.name}: made by tunebook from runs/{res.recipe.name}; "
               f"`ollama create {res.recipe.name} -f Modelfile` in this folder.\n"
               "TEMPLATE is the chat template the model was trained with; stop = its end-of-turn token.\n"
               "temperature 0: the eval stage's scores are for greedy decoding.")
    text = ollama.modelfile(gguf_name, turns, stops, system, {"temperature": 0}, comment=comment)
    parsed = ollama.parse_modelfile(text)
    if ([v for k, v in parsed if k == "TEMPLATE"] != [ollama.go_template(turns)]
            or [v[5:] for k, v in parsed if k == "PARAMETER" and v.startswith("stop ")] != stops
            or [v for k, v in parsed if k == "SYSTEM"] != ([system] if system else [])):
        raise TunebookError("the Modelfile does not read back as written", exit_code=1,
                            fix="Report it; export --format gguf and write the Modelfile by hand meanwhile.")
    return text


def export_ollama(res: ResolvedRecipe, quant: str = DEFAULT_QUANT) -> Path:
    """Write runs/<recipe>/export/<recipe>-ollama/ (Modelfile, the GGUF, README.md) in one rename; return it."""
    if quant not in QUANTS:
        raise TunebookError(f"unknown quantization '{quant}'", fix=f"Use one of: {', '.join(QUANTS)}.")
    src = source(res)
    modelfile = ollama_modelfile(res, src, gguf_path(res, quant).name)  # refuses before any conversion
    gguf = _build(res, src, quant)
    layout = res.layout
    manifest = json.loads(layout.manifest.read_text()) if layout.manifest.is_file() else {}
    card = model_card(res, "merged", src.model.stage, manifest, json.loads(layout.lock.read_text()),
                      eval_results(res))
    card += (f"\n## Ollama\n\n`{gguf.name}` is the merged model in GGUF ({quant}), made with llama.cpp "
             f"(llama-cpp-python {llamacpp.VERSION}). In this folder:\n\n```\nollama create {res.recipe.name} -f "
             f"Modelfile\nollama run {res.recipe.name}\n```\n")
    dest = layout.export_dir / f"{res.recipe.name}-ollama"
    with atomic_dir(dest) as tmp:
        try:
            os.link(gguf, tmp / gguf.name)  # no second copy of the weights
        except OSError:
            shutil.copy2(gguf, tmp / gguf.name)
        atomic_write_text(tmp / "Modelfile", modelfile)
        atomic_write_text(tmp / "README.md", card)
    return dest
