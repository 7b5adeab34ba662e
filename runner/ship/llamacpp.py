"""The one seam to llama.cpp: its converter (convert_hf_to_gguf.py), its quantizer and its runtime.

All three come from one release of llama-cpp-python on PyPI (`make gguf-tools`): the source distribution vendors
llama.cpp, so its `vendor/llama.cpp/convert_hf_to_gguf.py` (with `conversion/` and the `gguf-py` it was written
against) is unpacked into `.cache/llama.cpp-<version>/`, and the same source is built once into the
llama-cpp-python wheel installed in `.venv`, whose libllama holds llama.cpp's quantizer
(`llama_model_quantize`, what the `llama-quantize` tool calls) and its inference code. Converter, quantizer and
runtime are therefore the same llama.cpp commit. `$TUNEBOOK_LLAMA_CPP` may name another llama.cpp checkout
for the converter.

The converter runs as a subprocess of this Python (it needs torch, transformers and safetensors, all in `.venv`)
and imports the `gguf-py` beside it, not the `gguf` package installed for transformers.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import TunebookError
from runner.hardware import compute_threads
from runner.recipe.load import PACKAGE_ROOT

VERSION = "0.3.36"          # llama-cpp-python: what `make gguf-tools` builds and the tests ran against
LLAMA_CPP_COMMIT = "0c1e57098"  # the llama.cpp it vendors (its CHANGELOG)
TOOLS_ENV = "TUNEBOOK_LLAMA_CPP"
QUANTS = ("f16", "q8_0", "q4_k_m")
FIX = "Run `make gguf-tools` (builds llama.cpp from llama-cpp-python's source once, ~6 min on 2 cores)."


def tools_dir() -> Path:
    """The llama.cpp source folder holding convert_hf_to_gguf.py."""
    return Path(os.environ.get(TOOLS_ENV) or PACKAGE_ROOT / ".cache" / f"llama.cpp-{VERSION}")


def converter() -> Path:
    """convert_hf_to_gguf.py; TunebookError saying how to get it when it is missing."""
    script = tools_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise TunebookError(f"llama.cpp's converter is not installed ({script} is missing)", fix=FIX)
    return script


def _llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:
        raise TunebookError("llama-cpp-python (llama.cpp's quantizer and runtime) is not installed in this "
                            "Python", fix=FIX)
    lib = tools_dir() / "lib"
    if "LLAMA_CPP_LIB_PATH" not in os.environ and (lib / "libllama.so").is_file():
        os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)  # the libllama `make gguf-tools` built (llama_cpp reads it)
    try:
        import llama_cpp
    except (OSError, RuntimeError, FileNotFoundError) as exc:
        raise TunebookError(f"llama-cpp-python cannot load libllama: {exc}", fix=FIX) from None
    _no_extra_buffer_types(llama_cpp.llama_cpp)
    return llama_cpp


def _no_extra_buffer_types(low) -> None:
    """Load models without llama.cpp's extra CPU buffer types (AMX tiles and weight repacking). On a CPU with AMX
    (Intel Sapphire Rapids and later) llama.cpp 0.3.36 places weights in its AMX buffer and segfaults in the first
    llama_decode (gdb: ggml_backend_amx_mul_mat), killing the process with no message; the plain CPU kernels run
    everywhere and give every machine the same answers. llama-cpp-python's Llama() exposes no switch for it, so
    the default model parameters it starts from are wrapped (once per process)."""
    default = low.llama_model_default_params
    if getattr(default, "tunebook_plain_buffers", False):
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    params.tunebook_plain_buffers = True
    low.llama_model_default_params = params


def runtime_version() -> str:
    """The installed llama-cpp-python's version."""
    return _llama_cpp().__version__


def convert(model_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """llama.cpp's converter: the Hugging Face model folder `model_dir` to a GGUF file `out` (`outtype` f16, bf16,
    f32 or q8_0). Its output goes to `log`; a failure is a TunebookError with its last lines."""
    script = converter()
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # set, the converter would import the installed gguf instead of its own gguf-py
    with open(log, "w", encoding="utf-8") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-6:]
        raise TunebookError(f"llama.cpp's converter failed on {model_dir} (exit {r.returncode}): "
                            + " | ".join(tail)[-800:], where=str(log), exit_code=1,
                            fix="Check that the model folder is complete and its architecture is one llama.cpp "
                                "converts (see the log).")


def quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's quantizer (llama_model_quantize): the f16 GGUF `src` to `dst` in `quant` (q8_0, q4_k_m)."""
    lc = _llama_cpp()
    ftype = {"q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": lc.LLAMA_FTYPE_MOSTLY_Q4_K_M,
             "f16": lc.LLAMA_FTYPE_MOSTLY_F16}[quant]
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = compute_threads()
    with quiet():
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise TunebookError(f"llama.cpp's quantizer failed ({quant}, code {rc}) on {src}", exit_code=1,
                            fix="Export --quant f16, or check the f16 file with `gguf-dump`.")


@contextlib.contextmanager
def quiet():
    """llama.cpp's own log lines (model loading, per-tensor quantization) off stderr while inside."""
    lc = _llama_cpp()
    cb = lc.llama_log_callback(lambda level, text, data: None)
    lc.llama_log_set(cb, None)
    try:
        yield
    finally:
        lc.llama_log_set(cb, None)  # keep quiet: the callback object stays referenced by the module
        _KEEP.append(cb)


_KEEP: list = []  # ctypes callbacks handed to llama.cpp must outlive every call that may use them


def metadata(path: Path) -> dict:
    """A GGUF file's key/value metadata (scalars and strings; arrays left out), read with the `gguf` package."""
    from gguf import GGUFReader

    out = {}
    for key, field in GGUFReader(str(path)).fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
            continue
        with contextlib.suppress(Exception):
            out[key] = field.contents()
    return out


_PROBE = r"""
import json, sys
from runner.ship.llamacpp import Model
req = json.load(sys.stdin)
with Model(req["path"], vocab_only=True) as m:
    print(json.dumps({"ids": m.tokenize(req["prompt"]), "eog": m.is_eog(req["end_of_turn"])}))
"""


def probe(path: Path, prompt: str, end_of_turn: int) -> dict:
    """In a child process (llama.cpp aborts the process on a vocabulary it cannot use, e.g. a byte-level BPE
    written as SentencePiece): llama.cpp's token ids for `prompt` and whether `end_of_turn` ends generation.
    {"ids": [...], "eog": bool}, or {"crashed": "<why>"}."""
    r = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(
        {"path": str(path), "prompt": prompt, "end_of_turn": end_of_turn}), capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)})
    if r.returncode:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("#", "["))]
        return {"crashed": f"exit {r.returncode}: " + " | ".join(lines[-2:])[-300:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


@dataclass
class Answer:
    """One greedy completion: the text, whether it ended on an end-of-generation token before max_new_tokens,
    and the generated token ids (the end token not included) and which of them are control tokens."""

    text: str
    stopped: bool
    ids: list[int]
    control: list[int]


class Model:
    """A GGUF loaded by llama.cpp (CPU) for tokenizing and greedy generation. Use as a context manager."""

    def __init__(self, path: Path, n_ctx: int = 1024, vocab_only: bool = False):
        lc = _llama_cpp()
        self._lc = lc
        with quiet():
            self.llm = lc.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=compute_threads(), vocab_only=vocab_only,
                                verbose=False)
        self.vocab = lc.llama_model_get_vocab(self.llm.model)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` with special tokens parsed (as a rendered chat prompt holds them) and no BOS added:
        how tunebook's eval tokenizes prompts (the template writes any BOS itself)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def is_eog(self, token: int) -> bool:
        """Does llama.cpp end generation on this token (EOS, EOT and the other end-of-turn tokens it knows)?"""
        return bool(self._lc.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def greedy(self, prompt: str, max_new_tokens: int) -> Answer:
        """Greedy decoding (temperature 0, no repetition penalty, as the eval stage decodes) of a rendered
        prompt until an end-of-generation token or max_new_tokens."""
        ids, stopped = [], False
        with quiet():
            for tok in self.llm.generate(self.tokenize(prompt), temp=0.0, repeat_penalty=1.0, reset=True):
                if self.is_eog(tok):
                    stopped = True
                    break
                ids.append(tok)
                if len(ids) >= max_new_tokens:
                    break
        text = self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace").strip()
        control = [t for t in ids if self._lc.llama_vocab_is_control(self.vocab, t)]
        return Answer(text, stopped, ids, control)
