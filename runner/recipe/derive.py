"""Defaults derived from the data and the hardware, each with its reason (shown by `tunebook resolve`).

A recipe that names only a model and data should train well. The rules here pick epochs, learning rate,
sequence length, packing, batch shape and the validation split from the data's size and token lengths;
every one is overridden by a value written in the recipe (or its stage).
"""
from __future__ import annotations

import math

from runner import hardware as hw
from runner.chat_template import count_tokens
from runner.formats import block_format, checked_rows, open_data, to_messages
from runner.recipe.load import Recipe
from runner.tokenizer import load_tokenizer

SMALL_DATA_ROWS = 2000   # below this, a dataset is a "fact set": several epochs are needed to learn it
MIN_SEQ, SEQ_STEP = 128, 64
VALIDATION_FRACTION = 0.1  # carved out of a small fact set to pick the best epoch


def train_rows(rec: Recipe, block: dict) -> tuple[str | None, list[dict]]:
    """(format, rows) of a data block's training files, only the rows that pass the data check's row check
    (runner.formats.checked_rows): a malformed row never reaches the chat template here, and counts nothing;
    `tunebook data check` reports it at its file:line. A file that is not JSON Lines at all is an error."""
    files = block["train"] if isinstance(block["train"], list) else [block["train"]]
    fmt = block_format(block, rec.root)
    if fmt is None:
        for f in files:  # say why the format can't be told when the file itself is the problem
            open_data(rec.resolve_path(f), f).close()
        return None, []
    rows = []
    for f in files:
        rows += checked_rows(rec.resolve_path(f), f, fmt, block.get("min_output_chars", 1))
    return fmt, rows


def count_rows(rec: Recipe, block: dict) -> int:
    """Training rows of a block that pass the row check."""
    return len(train_rows(rec, block)[1])


def epochs_for(rows: int) -> tuple[float, str]:
    """Small fact sets need many passes; large sets need few (and overfit with more)."""
    if rows <= 0:
        return 3, "no rows counted"
    if rows < SMALL_DATA_ROWS:
        e = max(3, min(10, math.ceil(1200 / rows)))
        return e, (f"{rows} rows, a small fact set: ~1,200 example passes in total ({e} epochs); the best epoch "
                   "on the validation split is kept")
    if rows < 20000:
        return 2, f"{rows} rows: 2 epochs"
    return 1, f"{rows} rows: one epoch is enough"


def learning_rate_for(method: str, rows: int) -> tuple[float, str]:
    if method == "full":
        return 1.0e-5, "full fine-tune: every weight moves, so small steps"
    if rows and rows < SMALL_DATA_ROWS:
        # Measured on hr-bot (docs/quality.md): 2e-3 with ~3-row packs beat 1e-3 and 5e-4 at equal compute.
        return 2.0e-3, f"LoRA on {rows} rows: few optimizer steps, so a high adapter learning rate"
    return 2.0e-4, "LoRA: the usual adapter learning rate"


def round_seq(n: int) -> int:
    return max(MIN_SEQ, int(math.ceil(n / SEQ_STEP) * SEQ_STEP))


def token_lengths(rec: Recipe, block: dict, model_dir, chat_template: str | None,
                  checked: tuple[str | None, list[dict]] | None = None) -> list[int]:
    """Token count of each checked training row as the model sees it (chat template applied), counted the way
    the data check counts them (`runner.chat_template.count_tokens`, which remembers them for the data check).
    `checked`: train_rows(rec, block) when the caller has it already."""
    fmt, rows = checked or train_rows(rec, block)
    if fmt not in ("alpaca", "chat"):
        return []
    tok = load_tokenizer(model_dir, local_only=True)
    convs = [to_messages(row, fmt, rec.data.get("system_prompt"))["messages"] for row in rows]
    return count_tokens(tok, convs, chat_template)


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile of the values (0 when there are none); the data check's statistics use it too."""
    s = sorted(values)
    if not s:
        return 0
    return s[max(0, math.ceil(q * len(s)) - 1)]


def derive_defaults(rec: Recipe, preset: dict | None, h: hw.Hardware, model_dir=None,
                    chat_template: str | None = None) -> tuple[dict, dict]:
    """Training settings (tunebook `training:` keys) derived for this recipe, and why each was chosen.

    Keys the recipe sets itself are still derived here; the recipe layer overrides them later."""
    out, why = {}, {}
    block = rec.data["data"]
    trains_sft = any(s.kind == "sft" for s in rec.stages)
    method = ((rec.data.get("training") or {}).get("method") or ((preset or {}).get("training") or {}).get("method")
              or "lora")
    checked = train_rows(rec, block) if trains_sft else (None, [])
    rows = len(checked[1])
    if trains_sft and rows:
        out["epochs"], why["epochs"] = epochs_for(rows)
        out["learning_rate"], why["learning_rate"] = learning_rate_for(method, rows)

    lengths = token_lengths(rec, block, model_dir, chat_template, checked) if model_dir and trains_sft else []
    if lengths:
        p99, longest = percentile(lengths, 0.99), max(lengths)
        seq = round_seq(p99)
        why_seq = f"p99 of {len(lengths)} rows is {p99} tokens (longest {longest})"
        packing = trains_sft
        if packing:
            # Pack a few rows per sequence: no padding, and small packs give many optimizer steps, which
            # is what a small fact set needs (measured: 3-row packs learned more per token than 25-row ones).
            mean = max(1, int(sum(lengths) / len(lengths)))
            pack = max(seq, min(2048, round_seq(3 * mean)))
            out["sequence_len"], why["sequence_len"] = pack, (
                f"packed sequences of {pack} tokens (~{max(1, pack // mean)} rows each); {why_seq}; "
                f"a row longer than {pack} would be truncated")
            out["sample_packing"], why["sample_packing"] = True, (
                "packing with sdpa attention keeps rows from attending to each other and removes padding")
            total = sum(lengths)
            packs = max(1, math.ceil(total / pack))
            out["micro_batch_size"], why["micro_batch_size"] = 1, (
                "packed: one long sequence per step and device" + (
                    "; a small fact set keeps it on a GPU too (the derived learning rate was measured with one "
                    "pack per optimizer step)" if rows < SMALL_DATA_ROWS else ""))
            # A small fact set learns per optimizer step (hr-bot: accumulating 2 packs cost 6.7 points of held-out
            # accuracy at equal compute, docs/quality.md); large sets can afford smoother steps.
            accum = 1 if rows < SMALL_DATA_ROWS or packs < 64 else 2
            if rows < SMALL_DATA_ROWS:
                # The measured rule is "one optimizer step per pack at 2e-3": on a GPU too, so a preset's batch
                # shape (qlora-t4: 2 x 4 = 8 packs a step) must not meet the derived learning rate (resolve).
                out["_per_pack_steps"] = True
            out["gradient_accumulation_steps"], why["gradient_accumulation_steps"] = accum, (
                f"{total} tokens per epoch ≈ {packs} packed sequences: "
                f"{math.ceil(packs / accum)} optimizer steps per epoch"
                + (" (a small fact set learns per step: no accumulation)" if accum == 1 and rows < SMALL_DATA_ROWS
                   else ""))
        else:
            out["sequence_len"], why["sequence_len"] = seq, f"{why_seq}; longer rows are truncated"
    world = max(1, h.gpu_count) * max(1, getattr(h, "nodes", 1)) if h.cuda else 1
    if out.get("_per_pack_steps") and world > 1 and method != "full":
        # Data parallel: each optimizer step takes one pack per GPU, so an epoch has `world` times fewer steps
        # than the measured rule. The learning rate follows the square-root scaling rule for Adam (Malladi et
        # al., 2022: lr x sqrt(batch ratio)); not measured here, and said so.
        lr = float(f"{out['learning_rate'] * math.sqrt(world):.3g}")
        out["learning_rate"], why["learning_rate"] = lr, (
            f"{why['learning_rate']}; x sqrt({world}) = {lr:.2g} for {world} GPUs (one pack per GPU per step: "
            f"{world}x fewer steps per epoch; Adam's square-root scaling rule, not measured on this data)")
    if trains_sft and rows and rows < SMALL_DATA_ROWS and method in ("lora", "qlora"):
        # Measured on the development CPU (docs/quality.md): dropout's random masks are ~11% of a LoRA step.
        # A fact set is meant to be memorised, which dropout regularises against; the validation split and
        # the best-epoch choice guard against overfitting instead.
        out["lora"] = {"dropout": 0.0}
        why["lora_dropout"] = (f"{rows} rows, a small fact set to memorise: no adapter dropout (it regularises "
                               "against memorising, and on a CPU costs ~11% of each step); the best epoch "
                               "guards against overfitting")
    if trains_sft and rows and rows < SMALL_DATA_ROWS and "validation_fraction" not in block and rows >= 100:
        out["_validation_fraction"] = VALIDATION_FRACTION
        why["_validation_fraction"] = (f"{rows} rows: 10% carved out to pick the best epoch "
                                       "(the held-out file is kept for the final score)")
    if not h.cuda:
        why["threads"] = f"OMP_NUM_THREADS={h.cpu_cores}: all cores for torch on a CPU"
    return out, why
