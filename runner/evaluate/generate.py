"""Answer held-out prompts with a model: batched greedy generation with Hugging Face transformers (CPU or GPU),
or vLLM when it is installed and a CUDA GPU is present.

Every answer records whether it stopped on the end-of-turn token before max_new_tokens (`stopped`): a model that
never learned to stop is caught here, not in production.
"""
from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runner.chat_template import end_of_turn_token
from runner.console import say
from runner.errors import TunebookError
from runner.hardware import compute_threads
from runner.hardware import detect as detect_hardware
from runner.tokenizer import load_tokenizer as load_shared_tokenizer


@dataclass
class ModelSpec:
    """What to load: a model folder or hub id, plus optionally a LoRA adapter folder on top."""

    path: str
    adapter: str | None = None
    tokenizer: str | None = None  # where to load the tokenizer from (default: adapter folder if it has one, else path)
    label: str = "model"
    # Load the weights in 4 bits (NF4) on a GPU, as a QLoRA stage trained them: a 7-8B model in 16 bits does not
    # fit the T4 that qlora-t4 trained it on. Ignored on a CPU (bitsandbytes' 4-bit path is for CUDA).
    load_in_4bit: bool = False

    def tokenizer_path(self) -> str:
        if self.tokenizer:
            return self.tokenizer
        if self.adapter and any((Path(self.adapter) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return self.adapter
        return self.path

    def describe(self) -> str:
        return f"{self.path} + adapter {self.adapter}" if self.adapter else self.path


def model_fingerprint(path: str) -> str:
    """A cheap identity of a model: its path, config.json contents and the names/sizes of its weight files.

    (Hashing the weights themselves would cost minutes for a 7B model.)"""
    p = Path(path)
    h = hashlib.sha256(str(path).encode())
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.name == "config.json" or f.name == "adapter_config.json":
                h.update(f.read_bytes())
            elif f.is_file() and f.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def use_vllm() -> bool:
    if os.environ.get("TUNEBOOK_NO_VLLM"):
        return False
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def set_threads() -> None:
    import torch


    try:
        torch.set_num_threads(compute_threads())
    except Exception:
        pass


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer set up for batched generation: a pad token, padding on the left.

    A private copy (`runner.tokenizer`): these changes must not reach the shared tokenizer that counts tokens."""
    tok = load_shared_tokenizer(spec.tokenizer_path(), private=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def stop_ids(tok, template: str | None) -> list[int]:
    """The tokenizer's EOS plus the chat template's end-of-turn token."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    try:
        eot = end_of_turn_token(tok, template)
    except Exception:
        eot = None
    if eot:
        eid = tok.convert_tokens_to_ids(eot)
        if isinstance(eid, int) and eid not in ids:
            ids.append(eid)
    return ids


def render_prompts(tok, conversations: list[list[dict]], template: str | None) -> list[str]:
    """Each conversation (ending with a user turn) rendered with the generation prompt for the assistant."""
    return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True, chat_template=template)
            for c in conversations]


def inference_dtype() -> str:
    """The dtype models answer in here: bfloat16 on a GPU with bf16 (compute capability 8.0+), float16 on older
    ones, float32 on a CPU. The eval stage loads models in it and `tunebook serve` gives it to vLLM (--dtype), so
    the served model computes as the evaluated one did."""
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if detect_hardware().bf16 else "float16"


def load_model(spec: ModelSpec):
    """The model in eval mode on the best device, in inference_dtype(); 4-bit NF4 weights on a GPU when the spec
    says so (QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if torch.cuda.is_available():
        dtype = getattr(torch, inference_dtype())
        device = "cuda"
        if spec.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs = {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype), "device_map": {"": 0}}
    else:
        dtype, device = torch.float32, "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, **kwargs)
    except OSError as exc:
        raise TunebookError(f"cannot load the model {spec.path}: {exc}", exit_code=1,
                            fix="Check that the model folder exists and is complete (offline: hub models must "
                                "already be in the local cache).") from None
    if spec.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.adapter)
    if not kwargs:  # a quantized model is placed by device_map and cannot be moved
        model.to(device)
    model.eval()
    return model, device


def _decode_one(tok, gen_ids: list[int], eos: set[int], max_new_tokens: int) -> dict:
    cut = next((i for i, t in enumerate(gen_ids) if t in eos), None)
    body = gen_ids if cut is None else gen_ids[:cut]
    text = tok.decode(body, skip_special_tokens=True).strip()
    return {"text": text, "stopped": cut is not None, "tokens": len(body)}


def generate_hf(spec: ModelSpec, conversations: list[list[dict]], template: str | None, max_new_tokens: int,
                batch_size: int, quiet: bool = False) -> list[dict]:
    import torch

    set_threads()
    tok = load_tokenizer(spec)
    model, device = load_model(spec)
    eos = stop_ids(tok, template)
    prompts = render_prompts(tok, conversations, template)
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(tok(prompts[i], add_special_tokens=False)["input_ids"]))
    out: list[dict | None] = [None] * len(prompts)
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                                     pad_token_id=tok.pad_token_id)
                new = gen[:, enc["input_ids"].shape[1]:].tolist()
                for i, ids in zip(idx, new):
                    out[i] = _decode_one(tok, ids, set(eos), max_new_tokens)
                if not quiet:
                    say(f"  {spec.label}: {min(b + batch_size, len(order))}/{len(order)} answers")
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out  # type: ignore[return-value]


def generate_vllm(spec: ModelSpec, conversations: list[list[dict]], template: str | None, max_new_tokens: int,
                  quiet: bool = False) -> list[dict]:
    from vllm import LLM, SamplingParams  # type: ignore

    tok = load_tokenizer(spec)
    eos = stop_ids(tok, template)
    prompts = render_prompts(tok, conversations, template)
    kwargs = {"model": spec.path, "tokenizer": spec.tokenizer_path(), "dtype": "auto",
              "gpu_memory_utilization": float(os.environ.get("TUNEBOOK_VLLM_GPU_MEMORY", "0.85"))}
    if spec.load_in_4bit:  # as the QLoRA stage trained it: bitsandbytes 4-bit, quantized on load
        kwargs["quantization"] = "bitsandbytes"
    lora = None
    if spec.adapter:
        from vllm.lora.request import LoRARequest  # type: ignore

        cfg = json.loads((Path(spec.adapter) / "adapter_config.json").read_text())
        kwargs.update(enable_lora=True, max_lora_rank=max(8, int(cfg.get("r", 8))))
        lora = LoRARequest("tuned", 1, spec.adapter)
    llm = LLM(**kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=eos, skip_special_tokens=True)
    try:
        results = llm.generate(prompts, params, lora_request=lora, use_tqdm=not quiet)
        out = []
        for r in results:
            o = r.outputs[0]
            out.append({"text": o.text.strip(), "stopped": o.finish_reason == "stop", "tokens": len(o.token_ids)})
        return out
    finally:
        del llm
        gc.collect()
        import torch

        torch.cuda.empty_cache()


def generate(spec: ModelSpec, conversations: list[list[dict]], template: str | None, max_new_tokens: int = 64,
             batch_size: int = 8, quiet: bool = False) -> tuple[list[dict], str]:
    """Greedy answers for each conversation; returns (answers, backend used: 'vllm' or 'hf')."""
    if use_vllm():
        try:
            return generate_vllm(spec, conversations, template, max_new_tokens, quiet), "vllm"
        except Exception as exc:  # a vLLM that can't start here (version, memory): HF still gives answers
            say(f"vLLM could not run ({type(exc).__name__}: {str(exc)[:200]}); using transformers instead")
    return generate_hf(spec, conversations, template, max_new_tokens, batch_size, quiet), "hf"


def backend_name() -> str:
    return "vllm" if use_vllm() else "hf"
