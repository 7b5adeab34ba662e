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

from runner import preference
from runner.errors import TunebookError
from runner.hardware import ampere_or_newer
from runner.recipe.load import PACKAGE_ROOT

GIB = 1024 ** 3
PRESETS = PACKAGE_ROOT / "recipes" / "presets"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
# Allocator-visible memory that no term below names: cuBLAS/cuBLASLt workspaces, the autocast cache of bf16
# copies of the LoRA weights, rotary tables, masks, ids and labels. One constant for every setup (see
# docs/planner-accuracy.md for why 0.1 GiB is plausible); the CUDA context itself is not "allocated" memory
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
            model_type = cfg.get("model_type")
            tied = cfg.get("tie_word_embeddings")
            return cls(
                name=name, model_type=str(model_type or "llama"), hidden=hidden, layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg.get("intermediate_size") or 4 * hidden), heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]),
                tied=bool(TIED_DEFAULT.get(model_type, True) if tied is None else tied),
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
    """The architecture from recipes/presets/models.yaml for a hub id (or alias), if shipped.

    A path matches by its last part (".cache/models/smollm2-135m-instruct" is SmolLM2-135M-Instruct), so a
    recipe can be planned before its local model folder is prepared."""
    want = base_model.strip().rstrip("/").lower()
    last = want.rsplit("/", 1)[-1]
    for name, entry in _table("models.yaml")["models"].items():
        ids = [h.lower() for h in entry["hub_ids"]]
        if want in (name.lower(), *ids) or last in (name.lower(), *(h.rsplit("/", 1)[-1] for h in ids)):
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
    lora_kernels: bool = True           # Axolotl 0.19 auto-enables its fused LoRA qkv/o/MLP kernels
    optimizer: str = "adamw_torch_fused"
    zero_stage: int = 0                 # DeepSpeed ZeRO 0 (off) / 2 / 3
    offload: bool = False               # optimizer states (and fp32 master weights) on the CPU
    offload_params: bool = False        # ZeRO-3 parameters on the CPU
    n_gpus: int = 1
    dtype: str = "bf16"                 # bf16 | fp16 | fp32
    load_in_8bit: bool = False          # LoRA over LLM.int8 weights
    stage_kind: str = "sft"             # runner.preference: paired methods run chosen and rejected in one batch
    max_row_tokens: int | None = None   # without packing: longest row, i.e. the padded batch length

    @property
    def tokens(self) -> int:
        """Tokens in one micro batch as the GPU computes them (padding included)."""
        length = self.seq_len
        if not self.packing and self.max_row_tokens:
            length = min(self.seq_len, 64 * math.ceil(self.max_row_tokens / 64))  # Axolotl pads to x64
        method = preference.METHODS.get(self.stage_kind)
        pairs = 2 if method and method.paired else 1
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
        kernel_keys = [cfg.get(k) for k in ("lora_qkv_kernel", "lora_o_kernel", "lora_mlp_kernel")]
        if any(k is not None for k in kernel_keys):
            kernels = any(kernel_keys)
        else:  # Axolotl's own rule (check_auto_enable_lora_kernels)
            kernels = bool(adapter) and not cfg.get("rl") and not cfg.get("trust_remote_code") and not (
                adapter == "lora" and cfg.get("load_in_8bit"))
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
            lora_targets=targets, lora_dropout=float(cfg.get("lora_dropout") or 0.0), lora_kernels=kernels,
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

    breakdown: dict[str, int]  # bytes: weights, lora_params, gradients, optimizer, activations, logits, overhead
    peak_phase: str            # when the peak happens
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
        return int(trainable * (4 + 4 * states if per is None else 4 + per * states)), False
    return int(trainable * states * (param_bytes if per is None else per)), paged


def _layer_bytes_per_token(shape: ModelShape, s: TrainSetup) -> tuple[int, int]:
    """(saved activations of one decoder layer, backward working set) in bytes per token, 16-bit compute.

    Saved = what autograd keeps between a layer's forward and its backward, the layer input excluded (it is
    the checkpoint, or the previous layer's output). Attention keeps q, k and v repeated to all heads, and
    its output (sdpa with a mask, or Axolotl's varlen path for packing). docs/planner-accuracy.md derives
    each term.
    """
    a, h, i, q = 2, shape.hidden, shape.intermediate, shape.q_dim
    targets = target_modules(s.lora_targets)
    drop = 1 if s.lora_dropout else 0
    adapters = s.method != "full"
    plain_lora = s.method == "lora" and not s.load_in_8bit
    kernel_qkv = adapters and s.lora_kernels and {"q_proj", "k_proj", "v_proj"} <= targets
    kernel_o = adapters and s.lora_kernels and "o_proj" in targets
    kernel_mlp = adapters and s.lora_kernels and {"gate_proj", "up_proj", "down_proj"} <= targets

    def group(names: tuple[str, ...], width: int, kernel: bool) -> int:
        """Bytes/token kept for the input that a group of projections shares."""
        n = sum(name in targets for name in names)
        if s.method == "full":
            return a * width                       # the weights need it for their gradient
        if kernel:                                 # Axolotl's fused LoRA kernels keep X (and X_drop, mask)
            return width * (a + drop * (a + 1))
        if plain_lora:                             # PEFT casts to the adapter's fp32 and autocast back:
            return n * width * (a + drop)          # every adapter keeps its own copy (and dropout's mask)
        # bitsandbytes layers skip that cast under autocast: adapters share the input unless dropout gives
        # each its own dropped copy and mask; frozen 4/8-bit weights keep nothing themselves.
        return n * width * (a + 1) if drop else (a * width if n else 0)

    saved = (group(("q_proj", "k_proj", "v_proj"), h, kernel_qkv) + group(("o_proj",), q, kernel_o)
             + group(("gate_proj", "up_proj"), h, kernel_mlp) + 4 * a * q)
    # Liger's RMSNorm keeps its bf16 input (the mid-layer residual); HF's keeps an fp32 copy per norm.
    saved += a * h if s.liger_rms_norm else 2 * 4 * h
    if kernel_mlp:
        saved += 2 * a * i                         # gate and up; the kernel recomputes silu(gate) * up
        work = 3 * a * h + a * i                   # gradients in flight; its SwiGLU backward is in place
    else:
        saved += (2 if s.liger_glu else 3) * a * i + group(("down_proj",), i, False)
        # base and adapter input gradients of down_proj (plain LoRA also routes one through an fp32 cast)
        work = 2 * a * h + (3 if plain_lora else 2) * a * i
    if adapters and not (kernel_qkv and kernel_o and kernel_mlp):
        saved += a * s.lora_r * len(targets)       # unfused lora_B layers keep their r-wide inputs
    if s.grad_ckpt:
        work += a * h                              # the recomputed layer output, held until its backward ends
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
    """Peak allocated bytes on one GPU, as what is resident at the moment of the peak.

    Candidates: the loss (logits buffers on top of the stored activations), the backward of the last decoder
    layer (one layer's activations and gradients in flight), and, for full fine-tuning, the backward of the
    first layer, when nearly every weight gradient exists.
    """
    s, notes = setup, []
    n = max(1, s.n_gpus)
    b16 = DTYPE_BYTES[s.dtype]
    weights, wdesc = _weights(shape, s)
    full = s.method == "full"
    trainable = shape.params if full else shape.lora_params(s.lora_r, s.lora_targets)
    # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype); DeepSpeed casts everything to 16-bit and
    # keeps fp32 masters in the optimizer; full fine-tuning trains in the model dtype.
    pbytes = b16 if (full or s.zero_stage) else 4
    lora = 0 if full else trainable * pbytes
    grads = trainable * pbytes
    opt, paged = _state_bytes(s, trainable, pbytes)
    if s.optimizer not in OPTIMIZERS:
        notes.append(f"optimizer {s.optimizer} is not in the planner's table: counted as AdamW.")
    if paged:
        notes.append(f"{s.optimizer} keeps {opt / GIB:.2f} GiB of states in CUDA managed memory, which "
                     "PyTorch does not count and the driver can page out to CPU RAM; not in the peak.")
        opt = 0
    if _reference(s) and full:
        weights += shape.params * b16
        notes.append(f"full-parameter {s.stage_kind.upper()} holds a frozen reference copy of the model.")
    partial = full and not s.zero_stage  # grads appear layer by layer (Trainer zeroes them to None)
    if s.zero_stage >= 2:
        grads, opt = grads // n, opt // n
        if s.zero_stage == 3:
            # ZeRO-3 shards the weights; the layer being computed (and one prefetched) is gathered in full.
            live = 2 * (shape.linear_params // shape.layers) * b16 + shape.vocab * shape.hidden * b16
            weights = live if s.offload_params else weights // n + live
            lora //= n
            if s.offload_params:
                notes.append("weights live in CPU RAM (ZeRO-3 offload); two layers are gathered at a time.")
        if s.offload:  # gradient partitions, fp32 masters and optimizer states all move to CPU RAM
            grads, opt = 0, 0
            notes.append("gradients, optimizer states and fp32 master weights live in CPU RAM (ZeRO offload).")
        grads += 4 * shape.hidden ** 2  # reduce/prefetch buckets ("auto": about hidden^2 elements each)
    elif n > 1:
        grads *= 2  # DDP copies gradients into its all-reduce buckets
    tokens = s.tokens
    saved, work = _layer_bytes_per_token(shape, s)
    # One projection-sized 16-bit temporary in a layer's backward: the dequantized weight of a 4-/8-bit
    # projection, or the weight gradient of a full fine-tune before it is added into .grad.
    temp = max(x * y for x, y in shape.linears().values()) * 2 if (s.method != "lora" or s.load_in_8bit) else 0
    if s.grad_ckpt:
        stored = shape.layers * 2 * shape.hidden * tokens  # one hidden state per layer
        layer_peak = (saved + work) * tokens + temp        # one layer recomputed, then its backward
    else:
        stored = shape.layers * (saved + (2 * shape.hidden if s.liger_rms_norm else 0)) * tokens
        layer_peak = work * tokens + temp
    logits = _logits_bytes(shape, s, tokens)
    # During the activation peaks a full fine-tune holds only the output head's and one layer's gradients.
    grads_then = (shape.vocab * shape.hidden + shape.linear_params // shape.layers) * pbytes if partial else grads
    moments = [  # (phase, activations, logits, gradients)
        ("backward of the last decoder layer", stored + layer_peak, 0, grads_then),
        ("fused linear cross entropy" if s.liger_flce else "cross-entropy backward", stored, logits, grads_then),
    ]
    if partial:  # the first layer's backward: every other gradient exists, one layer's activations remain
        first = (saved + work + 2 * shape.hidden) * tokens + temp
        moments.append(("backward of the first decoder layer", first, 0, grads))
    phase, act, logit, grad = max(moments, key=lambda m: m[1] + m[2] + m[3])
    if not s.packing and not s.max_row_tokens:
        notes.append(f"no packing: batches pad to their longest row; planned for rows of the full "
                     f"{s.seq_len} tokens (worst case). Pass the longest row to plan for less.")
    breakdown = {"weights": weights, "lora_params": lora, "gradients": grad, "optimizer": opt,
                 "activations": act, "logits": logit, "overhead": OVERHEAD_BYTES}
    notes.insert(0, f"weights: {wdesc}; micro batch of {tokens:,} tokens; peak during {phase}.")
    return MemoryEstimate(breakdown={k: int(v) for k, v in breakdown.items()}, peak_phase=phase, notes=notes)


CUDA_WORKSPACE_BYTES = int(0.5 * GIB)  # cuBLAS workspace and kernels' scratch space while generating (assumption)


def estimate_inference(shape: ModelShape, setup: TrainSetup, batch: int, tokens: int) -> MemoryEstimate:
    """Peak allocated bytes on one GPU while the eval stage generates: the weights as the training stage held
    them (4-bit NF4 for QLoRA, else 16-bit; runner.evaluate.generate loads them so), the LoRA adapter in
    16-bit, the KV cache of `batch` sequences of `tokens` (prompt plus new tokens), the last position's
    logits in fp32, and a workspace. The whole model sits on GPU 0: generation does not shard it."""
    b16 = DTYPE_BYTES[setup.dtype] if setup.dtype != "fp32" else 2
    weights, how = _weights(shape, replace(setup, dtype="bf16" if setup.dtype == "fp32" else setup.dtype))
    lora = shape.lora_params(setup.lora_r, setup.lora_targets) * b16 if setup.method != "full" else 0
    kv = 2 * shape.layers * shape.kv_dim * b16 * batch * tokens
    logits = batch * shape.vocab * 4
    return MemoryEstimate({"weights": weights, "lora_params": lora, "kv_cache": kv, "logits": logits,
                           "overhead": CUDA_WORKSPACE_BYTES}, "generation",
                          [f"weights {how}; KV cache for {batch} x {tokens} tokens"])


def verdict(total_gib: float, gpu_mem_gib: float) -> str:
    """'fits' below 85% of usable memory, 'tight' up to 100%, else 'does not fit'."""
    share = total_gib / gpu_mem_gib
    return "fits" if share < FITS_BELOW else "tight" if share < TIGHT_BELOW else "does not fit"


# ---------------------------------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class GPU:
    """A GPU from recipes/presets/gpus.yaml (or a preset's own GPU, then without a speed)."""

    id: str
    name: str
    memory_gib: float           # usable: what PyTorch can allocate (total minus the CUDA context)
    tflops: float = 0.0         # dense 16-bit tensor TFLOP/s from the spec sheet (fp16 where no bf16)
    mfu: float = 0.0            # assumed model FLOPs utilisation for LoRA training
    compute_capability: str | None = None  # "8.0"; None for a preset's own GPU (then taken as Ampere or newer)

    @property
    def bf16(self) -> bool:
        return self.compute_capability is None or ampere_or_newer(self.compute_capability)


def load_gpus() -> dict[str, GPU]:
    """All GPUs in recipes/presets/gpus.yaml, by id, in the file's order (smallest memory first)."""
    out = {}
    for gid, g in _table("gpus.yaml")["gpus"].items():
        out[gid] = GPU(id=gid, name=g["name"], memory_gib=float(g["memory_gib"]), tflops=float(g["tflops_16bit"]),
                       mfu=float(g["mfu_lora"]), compute_capability=str(g["compute_capability"]))
    return out


def gpu_by_id(gid: str) -> GPU:
    """One GPU of the table; a clear error listing the known ids otherwise."""
    gpus = load_gpus()
    if gid not in gpus:
        raise TunebookError(f"unknown GPU '{gid}'", fix=f"Known GPUs: {', '.join(gpus)}.")
    return gpus[gid]


def prices(gid: str) -> list[dict]:
    """Price offers for one GPU from recipes/presets/gpu-prices.yaml, cheapest first."""
    offers = (_table("gpu-prices.yaml").get("prices") or {}).get(gid) or []
    return sorted(offers, key=lambda o: o["usd_per_hour"])


def cost(gid: str, hours: float, n_gpus: int = 1) -> list[dict]:
    """Each offer's price for `hours` on `n_gpus` GPUs (list prices; see gpu-prices.yaml for their dates)."""
    return [{**o, "usd": round(o["usd_per_hour"] * hours * n_gpus, 2)} for o in prices(gid)]


# ---------------------------------------------------------------------------------------------------- advice
def _fits(shape: ModelShape, s: TrainSetup, gpu: GPU) -> tuple[MemoryEstimate, str]:
    est = estimate_memory(shape, s)
    return est, verdict(est.peak_allocated_gib, gpu.memory_gib)


def advice(shape: ModelShape, setup: TrainSetup, gpu: GPU) -> list[str]:
    """What to change when the setup does not fit `gpu`, cheapest first, each step re-estimated.

    Steps apply cumulatively (each on top of the ones before) and stop once the estimate fits.
    """
    est, v = _fits(shape, setup, gpu)
    if v == "fits":
        return []
    out, s = [], setup

    def step(new: TrainSetup, text: str) -> bool:
        nonlocal s
        e, nv = _fits(shape, new, gpu)
        if e.peak_allocated_gib >= estimate_memory(shape, s).peak_allocated_gib - 0.01:
            return False  # no gain: not worth suggesting
        s = new
        out.append(f"{text}: peak {e.peak_allocated_gib:.1f} GiB on {gpu.name} ({nv})")
        return nv == "fits"

    if s.micro_batch > 1:
        rows = s.micro_batch * s.grad_accum
        mb = next((m for m in range(s.micro_batch - 1, 0, -1) if rows % m == 0
                   and _fits(shape, replace(s, micro_batch=m, grad_accum=rows // m), gpu)[1] == "fits"), 1)
        if step(replace(s, micro_batch=mb, grad_accum=max(1, rows // mb)),
                f"micro batch {s.micro_batch} -> {mb} with gradient accumulation {s.grad_accum} -> "
                f"{max(1, rows // mb)} (same {rows} rows per step; a little slower)"):
            return out
    if not s.grad_ckpt and step(replace(s, grad_ckpt=True),
                                "gradient_checkpointing: true (recomputes each layer: about 1/3 more compute)"):
        return out
    if not s.liger_flce and step(replace(s, liger_flce=True, liger_rms_norm=True, liger_glu=True),
                                 "Liger plugin with liger_fused_linear_cross_entropy: true (no full logits "
                                 "tensor; usually faster too)"):
        return out
    if s.method != "qlora" and step(replace(s, method="qlora", load_in_8bit=False),
                                    "the qlora preset (4-bit NF4 base weights, LoRA adapters)"):
        return out
    if not (s.zero_stage == 3 and s.offload) and step(
            replace(s, zero_stage=3, offload=True, offload_params=True),
            "DeepSpeed ZeRO-3 with CPU offload of parameters and optimizer (needs plenty of CPU RAM; "
            "several times slower)"):
        return out
    bigger = next((g for g in load_gpus().values() if g.memory_gib > gpu.memory_gib
                   and verdict(est.peak_allocated_gib, g.memory_gib) == "fits"), None)
    if bigger:
        offer = (prices(bigger.id) or [{}])[0]
        price = f", from ${offer['usd_per_hour']:.2f}/h at {offer['provider']}" if offer else ""
        out.append(f"a bigger GPU: {bigger.name} ({bigger.memory_gib:.0f} GiB) fits the setup as it is{price}")
    else:
        out.append(f"no single listed GPU fits {est.peak_allocated_gib:.0f} GiB: use several (--gpus N) with "
                   "ZeRO-3, or a smaller model")
    return out


# ---------------------------------------------------------------------------------------------------- time
QLORA_SPEED = 0.8        # 4-bit dequantization: reference H100 runs, 6,000 vs 7,600 tokens/s (docs)
OFFLOAD_SPEED = 0.5      # ZeRO CPU offload: PCIe traffic every step (assumption)
MULTI_GPU_SCALING = 0.9  # per-GPU efficiency with 2+ GPUs (assumption)
PADDING_EFFICIENCY = 0.5  # without packing: share of computed tokens that are not padding (assumption)


def flops_per_token(shape: ModelShape, setup: TrainSetup) -> float:
    """Training FLOPs per token.

    Matmul weights N = decoder projections + output head. Full: 6N (forward 2N, backward 4N). LoRA/QLoRA:
    4N (the frozen weights need input gradients only) + 6 x LoRA params. Gradient checkpointing adds one
    more forward of the layers (2 x projection params). Causal attention adds 2 x layers x seq x q_dim per
    token forward, x3 with backward, +1 forward with checkpointing. DPO and KTO add the reference forward.
    """
    s = setup
    n_mm = shape.linear_params + shape.vocab * shape.hidden
    attn = 2 * shape.layers * s.seq_len * shape.q_dim
    if s.method == "full":
        f = 6 * n_mm
    else:
        f = 4 * n_mm + 6 * shape.lora_params(s.lora_r, s.lora_targets)
    f += 3 * attn
    if s.grad_ckpt:
        f += 2 * shape.linear_params + attn
    if _reference(s):
        f += 2 * n_mm + attn
    return float(f)


def _reference(s: TrainSetup) -> bool:
    """Does the stage run a frozen reference model beside the trained one (DPO, KTO)?"""
    method = preference.METHODS.get(s.stage_kind)
    return bool(method and method.reference)


def estimate_time(shape: ModelShape, setup: TrainSetup, tokens_per_epoch: float, epochs: float,
                  gpu: GPU) -> tuple[float, float]:
    """(training tokens per second across all GPUs, wall-clock hours) from the FLOPs model and gpu.mfu."""
    if not gpu.tflops or not gpu.mfu:
        return 0.0, 0.0
    s = setup
    speed = gpu.tflops * 1e12 * gpu.mfu * max(1, s.n_gpus)
    speed *= (QLORA_SPEED if s.method == "qlora" else 1.0) * (OFFLOAD_SPEED if s.offload else 1.0)
    speed *= MULTI_GPU_SCALING if s.n_gpus > 1 else 1.0
    tps = speed / flops_per_token(shape, s) * (1.0 if s.packing else PADDING_EFFICIENCY)
    return tps, tokens_per_epoch * epochs / tps / 3600 if tokens_per_epoch else 0.0


# ---------------------------------------------------------------------------------------------------- plan
@dataclass
class GpuRow:
    gpu: GPU
    count: int
    verdict: str
    tokens_per_s: float
    hours: float
    costs: list[dict]
    advice: list[str]


@dataclass
class Plan:
    """Everything `tunebook plan` shows: one memory estimate, then fit, speed and cost per GPU."""

    title: str
    shape: ModelShape
    setup: TrainSetup
    estimate: MemoryEstimate
    rows: list[GpuRow]
    primary: str | None
    tokens_per_epoch: int | None
    tokens_source: str
    epochs: float

    def to_dict(self) -> dict:
        """The plan as plain JSON-able data (`tunebook plan --json`)."""
        gib = {k: round(v / GIB, 3) for k, v in self.estimate.breakdown.items()}
        peak = round(self.estimate.peak_allocated_gib, 3)
        gpus = []
        for r in self.rows:
            cheapest = r.costs[0] if r.costs else None
            gpus.append({
                "id": r.gpu.id, "name": r.gpu.name, "count": r.count, "memory_gib": r.gpu.memory_gib,
                "peak_allocated_gib": peak, "breakdown_gib": gib, "verdict": r.verdict,
                "use_pct": round(100 * peak / r.gpu.memory_gib, 1), "tokens_per_s": round(r.tokens_per_s),
                "hours": round(r.hours, 3), "cost_usd": {"cheapest": cheapest, "offers": r.costs},
                "advice": r.advice})
        return {
            "title": self.title,
            "model": {"name": self.shape.name, "model_type": self.shape.model_type, "params": self.shape.params,
                      **{k: getattr(self.shape, k) for k in ("hidden", "layers", "intermediate", "heads",
                                                             "kv_heads", "head_dim", "vocab", "tied")}},
            "setup": asdict(self.setup), "tokens_per_micro_batch": self.setup.tokens,
            "tokens_per_epoch": self.tokens_per_epoch, "tokens_source": self.tokens_source, "epochs": self.epochs,
            "peak_allocated_gib": peak, "breakdown_gib": gib, "peak_phase": self.estimate.peak_phase,
            "notes": self.estimate.notes, "primary_gpu": self.primary, "gpus": gpus,
            "assumptions": ASSUMPTIONS}

    def render(self) -> str:
        """Human-readable tables (rich when installed, plain text otherwise)."""
        s, est = self.setup, self.estimate
        title = f"{self.title}: " if self.title != self.shape.name else ""
        head = (f"{title}{self.shape.name} ({self.shape.params / 1e9:.2f}B params, {self.shape.model_type}), "
                f"{s.method}, seq {s.seq_len}, micro batch {s.micro_batch} x accumulation {s.grad_accum}"
                f"{', packing' if s.packing else ''}{', grad ckpt' if s.grad_ckpt else ''}"
                f"{', Liger FLCE' if s.liger_flce else ''}, {s.optimizer}"
                f"{f', ZeRO-{s.zero_stage}' if s.zero_stage else ''}{' + offload' if s.offload else ''}"
                f"{f', {s.n_gpus} GPUs' if s.n_gpus > 1 else ''}")
        mem = [(k, f"{v / GIB:.2f}", WHAT[k]) for k, v in est.breakdown.items()]
        mem.append(("peak allocated", f"{est.peak_allocated_gib:.2f}", f"per GPU, during the {est.peak_phase}"))
        fit = []
        for r in self.rows:
            c = r.costs[0] if r.costs else None
            fit.append((("* " if r.gpu.id == self.primary else "") + r.gpu.name, f"{r.gpu.memory_gib:.0f}",
                        f"{100 * est.peak_allocated_gib / r.gpu.memory_gib:.0f}%", r.verdict,
                        f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-", _duration(r.hours),
                        (f"${c['usd']:,.2f}" if c["usd"] >= 0.01 else "<$0.01") + f" ({c['provider']})" if c else "-"))
        source = f" ({self.tokens_source})" if self.tokens_source else ""
        tokens = (f"{self.tokens_per_epoch:,} tokens/epoch x {self.epochs:g} epochs{source}"
                  if self.tokens_per_epoch else "no token count: time and cost not estimated")
        lines = [f"- {n}" for n in est.notes] + [f"- {tokens}"]
        for r in self.rows:
            if r.advice:
                lines.append(f"To fit {r.gpu.name} ({r.verdict}), in order of cost:")
                lines += [f"  {i}. {a}" for i, a in enumerate(r.advice, 1)]
        return _tables(head, [("memory", ("component", "GiB", "what"), mem),
                              ("GPUs", ("GPU", "usable GiB", "use", "verdict", "tokens/s", "time", "cost from"), fit)],
                       lines)


def _duration(hours: float) -> str:
    if not hours:
        return "-"
    return f"{hours:,.1f} h" if hours >= 1 else f"{max(1, round(hours * 60))} min"


WHAT = {
    "weights": "base model on the GPU (quantized projections, 16-bit embeddings and norms)",
    "lora_params": "LoRA adapter weights (fp32, as PEFT keeps them)",
    "gradients": "gradients of what is trained (+ DDP buckets / ZeRO partitions)",
    "optimizer": "optimizer states (+ fp32 masters under DeepSpeed); paged ones are not counted",
    "activations": "checkpointed hidden states + one layer's recompute and its gradients",
    "logits": "logits / cross-entropy buffers at the loss (0 once past it)",
    "overhead": "cuBLAS workspaces, autocast casts, masks, ids (constant)",
}


def _tables(title: str, tables: list[tuple[str, tuple, list[tuple]]], lines: list[str]) -> str:
    try:
        import io

        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is missing
        out = [title]
        for name, cols, rows in tables:
            widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
            out += ["", name] + ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in (cols, *rows)]
        return "\n".join(out + [""] + lines) + "\n"
    buf = io.StringIO()
    con = Console(file=buf, width=120, no_color=True, highlight=False)
    con.print(title)
    for name, cols, rows in tables:
        t = Table(title=name, title_justify="left")
        for c in cols:
            t.add_column(c, justify="right" if c in ("GiB", "usable GiB", "use", "tokens/s", "time") else "left")
        for row in rows:
            t.add_row(*map(str, row))
        con.print(t)
    for line in lines:
        con.print(line, markup=False)
    return buf.getvalue()


ASSUMPTIONS = [
    "memory is peak allocated by PyTorch (torch.cuda.max_memory_allocated); the CUDA context is outside it "
    "and is taken off each GPU's usable memory",
    "fits < 85% of usable memory < tight < 100%: the caching allocator reserves more than it allocates",
    "throughput = dense 16-bit TFLOP/s x assumed MFU (gpus.yaml) / FLOPs per token; qlora x0.8, "
    "CPU offload x0.5, 2+ GPUs x0.9 each, no packing x0.5 for padding",
    "prices are list prices on the dates recorded in recipes/presets/gpu-prices.yaml",
]


def make_plan(shape: ModelShape, setup: TrainSetup, gpus: list[GPU], primary: str | None = None,
              tokens_per_epoch: int | None = None, tokens_source: str = "", epochs: float = 1.0,
              title: str = "") -> Plan:
    """Estimate once, then judge fit, speed, cost (and advice where it does not fit) on each GPU."""
    est = estimate_memory(shape, setup)
    rows = []
    for g in gpus:
        v = verdict(est.peak_allocated_gib, g.memory_gib)
        tps, hours = estimate_time(shape, setup, tokens_per_epoch or 0, epochs, g)
        rows.append(GpuRow(gpu=g, count=setup.n_gpus, verdict=v, tokens_per_s=tps, hours=hours,
                           costs=cost(g.id, hours, setup.n_gpus) if hours else [],
                           advice=advice(shape, setup, g) if (v != "fits" and (g.id == primary or not primary))
                           else []))
    return Plan(title=title or shape.name, shape=shape, setup=setup, estimate=est, rows=rows, primary=primary,
                tokens_per_epoch=tokens_per_epoch, tokens_source=tokens_source, epochs=epochs)
