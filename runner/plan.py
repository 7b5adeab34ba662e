"""The planner: peak GPU memory, time and cost of a fine-tuning run, from the config alone.

Everything here is arithmetic on the model's shape and the training setup; nothing is downloaded and torch is
never imported, so a plan takes milliseconds. The formulas, their assumptions and how they compare with
measurements are written up in docs/planner-accuracy.md; keep the two in step.
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import TunebookError

GIB = 1024 ** 3
PRESETS = Path(__file__).resolve().parent.parent / "recipes" / "presets"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
# Allocator-visible memory that no term below names: cuBLAS/cuBLASLt workspaces, the autocast cache of bf16
# copies of the LoRA weights, rotary tables, masks, ids and labels. One constant for every setup (see
# docs/planner-accuracy.md for why 0.25 GiB is plausible); the CUDA context itself is not "allocated" memory
# and is taken off the GPU's usable memory in gpus.yaml instead.
OVERHEAD_BYTES = int(0.1 * GIB)
FITS_BELOW, TIGHT_BELOW = 0.85, 1.0  # share of usable GPU memory; the rest absorbs allocator fragmentation
# transformers' PretrainedConfig ties embeddings unless a model class says otherwise.
TIED_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False, "gemma": True, "gemma2": True}


# ---------------------------------------------------------------------------------------------------- shape
@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOPs model needs to know about a decoder-only transformer."""

    name: str
    model_type: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    logit_softcap: float | None = None

    @classmethod
    def from_config(cls, cfg: dict, name: str = "model") -> "ModelShape":
        """Read a Hugging Face config.json dict (llama, mistral, qwen2, gemma2 and look-alikes)."""
        cfg = cfg.get("text_config") or cfg  # multimodal wrappers keep the language model here
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            model_type = str(cfg.get("model_type", "llama"))
            return cls(
                name=name, model_type=model_type, hidden=hidden, layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg.get("intermediate_size") or 4 * hidden), heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]),
                tied=bool(cfg.get("tie_word_embeddings", TIED_DEFAULT.get(model_type, True))),
                logit_softcap=cfg.get("final_logit_softcapping"))
        except (KeyError, TypeError, ValueError) as exc:
            raise TunebookError(f"config.json of '{name}' lacks a usable {exc} field",
                                fix="Pass the folder of a decoder-only model (llama, mistral, qwen2, gemma2 "
                                    "style config.json).") from None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' projections (what 4-/8-bit quantization applies to)."""
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def embed_params(self) -> int:
        """Input embedding plus, when untied, the output head (both stay in 16-bit under quantization)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        per_layer = 4 if self.model_type.startswith("gemma2") else 2  # gemma2 adds post-attn/ffn norms
        return (self.layers * per_layer + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.embed_params + self.norm_params

    def lora_params(self, r: int, targets) -> int:
        """LoRA A (r x in) plus B (out x r) for every targeted projection in every layer."""
        return self.layers * r * sum(a + b for name, (a, b) in self.linears().items()
                                     if name in target_modules(targets))


def target_modules(targets) -> set[str]:
    """Names of the standard projections a LoRA target list selects ('all-linear' = all seven)."""
    if targets in (None, "all-linear", "all_linear") or targets == ["all-linear"]:
        return set(PROJECTIONS)
    names = [targets] if isinstance(targets, str) else list(targets)
    return {n for n in PROJECTIONS if any(n == t or t.endswith("." + n) for t in names)}


@lru_cache(maxsize=None)
def _table(name: str) -> dict:
    with open(PRESETS / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def shipped_model(base_model: str) -> ModelShape | None:
    """The architecture from recipes/presets/models.yaml for a hub id (or alias), if shipped."""
    want = base_model.strip().lower()
    for name, entry in _table("models.yaml")["models"].items():
        if want == name.lower() or want in (h.lower() for h in entry["hub_ids"]):
            return ModelShape.from_config(entry["config"], name=base_model)
    return None


def _hub_cache_configs(repo_id: str) -> list[Path]:
    roots = [os.environ.get("HF_HUB_CACHE"),
             os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None,
             os.path.expanduser("~/.cache/huggingface/hub")]
    folder = "models--" + repo_id.replace("/", "--")
    found = []
    for root in filter(None, roots):
        found += [Path(p) for p in glob.glob(os.path.join(root, folder, "snapshots", "*", "config.json"))]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def load_model_shape(base_model: str, repo_root: Path) -> ModelShape:
    """Shape of `base_model`: a local folder or config.json, the HF cache, else the shipped table."""
    path = Path(base_model).expanduser()
    path = path if path.is_absolute() else Path(repo_root) / path
    candidates = [path / "config.json"] if path.is_dir() else [path] if path.suffix == ".json" else []
    if "/" in base_model and not path.exists():
        candidates += _hub_cache_configs(base_model.strip("/"))
    for cfg_path in candidates:
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TunebookError(f"cannot read {cfg_path}: {exc}", fix="Pass a valid config.json.") from None
            return ModelShape.from_config(cfg, name=base_model)
    shape = shipped_model(base_model)
    if shape is None:
        raise TunebookError(
            f"don't know the shape of model '{base_model}': no config.json on disk, not in the Hugging Face "
            "cache, and not in recipes/presets/models.yaml",
            fix="Pass a local model folder or its config.json (tunebook plan --model path/to/config.json), "
                "or download the model's config.json once.")
    return shape


# ---------------------------------------------------------------------------------------------------- setup
@dataclass
class TrainSetup:
    """One training stage as the memory model sees it."""

    method: str = "lora"                # full | lora | qlora
    seq_len: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    packing: bool = False
    liger_flce: bool = False            # Liger fused linear cross entropy: no full logits tensor
    liger_rms_norm: bool = False        # Liger RMSNorm saves its bf16 input instead of an fp32 copy
    liger_glu: bool = False             # Liger SwiGLU saves two tensors of the MLP instead of four
    grad_ckpt: bool = True
    lora_r: int = 16
    lora_targets: list[str] | str = "all-linear"
    lora_dropout: float = 0.0
    optimizer: str = "adamw_torch_fused"
    zero_stage: int = 0                 # DeepSpeed ZeRO 0 (off) / 2 / 3
    offload: bool = False               # optimizer states (and fp32 master weights) on the CPU
    offload_params: bool = False        # ZeRO-3 parameters on the CPU
    n_gpus: int = 1
    dtype: str = "bf16"                 # bf16 | fp16 | fp32
    load_in_8bit: bool = False          # LoRA over LLM.int8 weights
    stage_kind: str = "sft"             # dpo/orpo run chosen and rejected in one batch
    max_row_tokens: int | None = None   # without packing: longest row, i.e. the padded batch length

    @property
    def tokens(self) -> int:
        """Tokens in one micro batch as the GPU computes them (padding included)."""
        length = self.seq_len
        if not self.packing and self.max_row_tokens:
            length = min(self.seq_len, 64 * math.ceil(self.max_row_tokens / 64))  # Axolotl pads to x64
        pairs = 2 if self.stage_kind in ("dpo", "orpo", "ipo", "simpo") else 1
        return self.micro_batch * length * pairs

    @classmethod
    def from_axolotl_config(cls, cfg: dict, repo_root: Path = Path("."), n_gpus: int = 1) -> "TrainSetup":
        """Read the keys of an Axolotl config dict that decide memory (see the class fields)."""
        adapter = cfg.get("adapter")
        method = "full" if not adapter else "qlora" if (adapter == "qlora" or cfg.get("load_in_4bit")) else "lora"
        plugins = [str(p) for p in cfg.get("plugins") or []]
        liger = any(p == LIGER_PLUGIN or p.endswith("LigerPlugin") for p in plugins)
        targets = "all-linear" if cfg.get("lora_target_linear") else cfg.get("lora_target_modules") or "all-linear"
        zero, off_opt, off_par = _deepspeed(cfg.get("deepspeed"), Path(repo_root))
        dtype = "bf16" if cfg.get("bf16") not in (None, False) else "fp16" if cfg.get("fp16") else "fp32"
        return cls(
            method=method, seq_len=int(cfg.get("sequence_len") or 2048),
            micro_batch=int(cfg.get("micro_batch_size") or 1),
            grad_accum=int(cfg.get("gradient_accumulation_steps") or 1),
            packing=bool(cfg.get("sample_packing")),
            liger_flce=liger and bool(cfg.get("liger_fused_linear_cross_entropy")),
            liger_rms_norm=liger and bool(cfg.get("liger_rms_norm")),
            liger_glu=liger and bool(cfg.get("liger_glu_activation")),
            grad_ckpt=bool(cfg.get("gradient_checkpointing")), lora_r=int(cfg.get("lora_r") or 8),
            lora_targets=targets, lora_dropout=float(cfg.get("lora_dropout") or 0.0),
            optimizer=str(cfg.get("optimizer") or "adamw_torch"), zero_stage=zero, offload=off_opt,
            offload_params=off_par, n_gpus=n_gpus, dtype=dtype,
            load_in_8bit=method == "lora" and bool(cfg.get("load_in_8bit")),
            stage_kind=str(cfg.get("rl") or "sft"))


def _deepspeed(ref, repo_root: Path) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offloaded, params offloaded) from a DeepSpeed JSON path or dict."""
    if not ref:
        return 0, False, False
    if isinstance(ref, dict):
        ds = ref
    else:
        tries = [Path(ref), repo_root / ref, repo_root / "recipes" / "presets" / ref]
        path = next((p for p in tries if p.is_file()), None)
        if path is None:
            raise TunebookError(f"DeepSpeed config '{ref}' not found", fix="Give a path to its JSON file.")
        try:
            ds = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TunebookError(f"DeepSpeed config is not JSON: {exc}", where=str(path)) from None
    zo = ds.get("zero_optimization") or {}

    def on_cpu(key):
        dev = (zo.get(key) or {}).get("device", "none")
        return str(dev).lower() in ("cpu", "nvme")

    return int(zo.get("stage") or 0), on_cpu("offload_optimizer"), on_cpu("offload_param")


# ---------------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryEstimate:
    """Peak allocated memory on one GPU, as what is resident at the peak moment."""

    breakdown: dict[str, int]           # bytes: weights, lora_params, gradients, optimizer, activations, logits, overhead
    peak_phase: str                     # when the peak happens
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def peak_allocated_gib(self) -> float:
        return self.total / GIB


# optimizer name -> (states per parameter, bytes per state element or None = the parameter's own dtype, paged)
OPTIMIZERS = {
    "adamw_torch": (2, None, False), "adamw_torch_fused": (2, None, False), "adamw_hf": (2, None, False),
    "adamw_apex_fused": (2, None, False), "adamw": (2, None, False), "adam": (2, None, False),
    "adamw_bnb_8bit": (2, 1.016, False), "adamw_8bit": (2, 1.016, False), "paged_adamw_8bit": (2, 1.016, True),
    "paged_adamw_32bit": (2, 4, True), "paged_adamw": (2, 4, True), "lion_8bit": (1, 1.016, False),
    "paged_lion_8bit": (1, 1.016, True), "lion_32bit": (1, 4, False), "paged_lion_32bit": (1, 4, True),
    "sgd": (0, None, False), "adafactor": (0, None, False),
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _weights(shape: ModelShape, s: TrainSetup) -> tuple[int, str]:
    b16 = DTYPE_BYTES[s.dtype]
    rest = (shape.embed_params + shape.norm_params) * b16  # embeddings, lm_head and norms stay 16-bit
    lin = shape.linear_params
    if s.method == "qlora":
        # NF4: half a byte per weight; double quantization stores one 8-bit absmax per 64 weights plus an
        # fp32 absmax per 256 of those (Axolotl always turns double quant on for qlora).
        return int(lin * 0.5 + lin / 64 + lin / (64 * 256) * 4) + rest, "NF4 + double-quant, embeddings 16-bit"
    if s.load_in_8bit:
        rows = shape.layers * sum(out for _, out in shape.linears().values())
        return lin + rows * 4 + rest, "LLM.int8 + fp32 row scales, embeddings 16-bit"
    return shape.params * b16, f"all {s.dtype}"


def _state_bytes(s: TrainSetup, trainable: int, param_bytes: int) -> tuple[int, bool]:
    states, per, paged = OPTIMIZERS.get(s.optimizer, OPTIMIZERS["adamw_torch"])
    if s.zero_stage:
        # DeepSpeed keeps an fp32 master copy and fp32 Adam states for what it trains (mixed precision).
        return trainable * (4 + 4 * states if per is None else 4 + per * states), False
    return int(trainable * states * (param_bytes if per is None else per)), paged


def _layer_bytes_per_token(shape: ModelShape, s: TrainSetup) -> tuple[int, int]:
    """(saved activations of one decoder layer, backward working set) in bytes per token, 16-bit compute.

    Saved = what autograd keeps between a layer's forward and its backward, the layer input excluded (it is
    the checkpoint, or the previous layer's output). Assumes sdpa with a mask (packing or padding), so k and
    v are repeated to all heads. Frozen projections keep no input; a LoRA adapter keeps the input of its
    lora_A: PEFT's plain Linear casts it to the adapter's fp32 and autocast back, so each adapter keeps a
    copy of its own, while the bitsandbytes layers (qlora, 8-bit) skip that cast under autocast and share.
    """
    a, h, i, q = 2, shape.hidden, shape.intermediate, shape.q_dim
    targets = target_modules(s.lora_targets)

    def inputs(names: tuple[str, ...]) -> int:  # copies of one shared input that autograd keeps
        if s.method == "full" or s.method == "qlora" or s.load_in_8bit:
            return 1
        return max(1, sum(n in targets for n in names))

    attn = a * h * inputs(("q_proj", "k_proj", "v_proj")) + 4 * a * q + a * q  # q, k, v, out; o_proj input
    norms = a * h if s.liger_rms_norm else 2 * 4 * h  # Liger: the mid residual; HF: two fp32 input copies
    mlp = a * h * inputs(("gate_proj", "up_proj")) + (2 if s.liger_glu else 3) * a * i + a * i  # + down input
    lora = 0
    if s.lora_dropout and s.method != "full":  # each adapter also keeps its dropped input and the mask
        lora = (a + 1) * sum(ins for name, (ins, _) in shape.linears().items() if name in targets)
    saved = attn + norms + mlp + lora
    # In the backward of a layer: the incoming and residual gradients, and at the MLP the input gradients of
    # the base and adapter branches (Liger's SwiGLU backward writes in place; the HF one allocates two more).
    work = 2 * a * h + (2 if s.liger_glu else 3) * a * i
    return saved, work


def _logits_bytes(shape: ModelShape, s: TrainSetup, tokens: int) -> int:
    v, h = shape.vocab, shape.hidden
    if s.liger_flce:
        # Liger FLCE: chunks of ~tokens*hidden/vocab rows; per chunk bf16 logits (gradient written in place)
        # plus the input gradient of the whole batch, computed during the forward pass.
        chunk = min(tokens, 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(v / h))))))
        return 2 * v * chunk + 2 * h * chunk + 2 * h * tokens + 4 * tokens
    # HF loss: bf16 logits are upcast to fp32 and log_softmax keeps an fp32 output; in backward the
    # log-softmax output, its incoming gradient and its input gradient (fp32 each) coexist: 12 bytes/entry.
    # Gemma-2's final tanh soft-capping keeps two more bf16 copies of the logits.
    per_token = 12 * v + 2 * h + (4 * v if shape.logit_softcap else 0)
    return per_token * tokens


def estimate_memory(shape: ModelShape, setup: TrainSetup) -> MemoryEstimate:
    """Peak allocated bytes per GPU: static state plus the larger of the loss peak and the layer peak."""
    s, notes = setup, []
    n = max(1, s.n_gpus)
    weights, wdesc = _weights(shape, s)
    trainable = shape.params if s.method == "full" else shape.lora_params(s.lora_r, s.lora_targets)
    # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype); full fine-tuning trains the model dtype.
    pbytes = DTYPE_BYTES[s.dtype] if s.method == "full" else 4
    lora = 0 if s.method == "full" else trainable * 4
    grads = trainable * pbytes
    opt, paged = _state_bytes(s, trainable, pbytes)
    if paged:
        notes.append(f"{s.optimizer} keeps {opt / GIB:.2f} GiB of states in CUDA managed memory, which "
                     "PyTorch does not count and the driver can page out to CPU RAM; not in the peak.")
        opt = 0
    if s.stage_kind == "dpo" and s.method == "full":
        weights += shape.params * DTYPE_BYTES[s.dtype]
        notes.append("full-parameter DPO holds a frozen reference copy of the model.")
    if s.zero_stage >= 2:
        grads, opt = grads // n, opt // n
        if s.zero_stage == 3:
            # ZeRO-3 shards the weights; the layer being computed (and one prefetched) is gathered in full.
            per_layer = shape.linear_params // shape.layers * DTYPE_BYTES[s.dtype]
            live = 2 * per_layer + shape.vocab * shape.hidden * DTYPE_BYTES[s.dtype]
            weights = live if s.offload_params else weights // n + live
            if s.method != "full":
                lora //= n
        grads += 4 * shape.hidden ** 2  # reduce/prefetch buckets ("auto": about hidden^2 elements each)
        if s.offload:
            opt = 0
            notes.append("optimizer states and fp32 master weights live in CPU RAM (ZeRO offload).")
    elif n > 1:
        grads *= 2  # DDP copies gradients into its all-reduce buckets
    tokens = s.tokens
    saved, work = _layer_bytes_per_token(shape, s)
    dequant = 0
    if s.method == "qlora" or s.load_in_8bit:  # the 16-bit copy of the largest projection during matmuls
        dequant = max(a * b for a, b in shape.linears().values()) * 2
    if s.grad_ckpt:
        stored = shape.layers * 2 * shape.hidden * tokens  # one hidden state per layer
        layer_peak = (saved + work) * tokens + dequant      # one layer recomputed, then its backward
    else:
        stored = shape.layers * (saved + (2 * shape.hidden if s.liger_rms_norm else 0)) * tokens
        layer_peak = work * tokens + dequant
    logits = _logits_bytes(shape, s, tokens)
    # The loss buffers are freed before the backward reaches the layers: the peak is one or the other.
    if layer_peak >= logits:
        phase, act, logit = "backward of the last decoder layer", stored + layer_peak, 0
    else:
        phase = "fused linear cross entropy" if s.liger_flce else "cross-entropy backward"
        act, logit = stored, logits
    if not s.packing and not s.max_row_tokens:
        notes.append(f"no packing: batches pad to their longest row; planned for rows of the full "
                     f"{s.seq_len} tokens (worst case). Pass the longest row to plan for less.")
    breakdown = {"weights": weights, "lora_params": lora, "gradients": grads, "optimizer": opt,
                 "activations": act, "logits": logit, "overhead": OVERHEAD_BYTES}
    notes.insert(0, f"weights: {wdesc}; micro batch of {tokens:,} tokens; peak during {phase}.")
    return MemoryEstimate(breakdown={k: int(v) for k, v in breakdown.items()}, peak_phase=phase, notes=notes)
