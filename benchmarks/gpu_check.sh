#!/usr/bin/env bash
# The GPU check (issue "the user's real path"): everything tunebook promises on a GPU, in one run of a few
# minutes on an H100-class machine, results as one JSON file under benchmarks/results/.
#
#   benchmarks/gpu_check.sh [--out DIR] [--only STEP[,STEP]] [--steps N] [--plan]
#
# Steps (each a real tunebook command; their outputs stay under benchmarks/tmp/gpu-check/):
#   train-qlora-t4   hr-bot through preset qlora-t4 on SmolLM2: train, eval (on the GPU: the held-out score),
#                    merge; its speed and peak memory
#   train-lora-h100  the same through lora-h100
#   bench-PRESET     each preset on a randomly initialised 1B Llama shape (`tunebook bench --vs naive`): tokens/s
#                    and peak memory against the planner's estimate (qlora-t4 lora-a100 lora-h100 qlora-h100)
#   zero3            full-ft-multigpu (DeepSpeed ZeRO-3) on every GPU of the machine, on the 1B shape
# --plan prints the commands and writes the result file with every step "planned", running nothing (what the
# CPU tests exercise; it needs no GPU). Without --plan the machine must have a CUDA GPU.
#
# Needs: tunebook and Axolotl importable by python3 (`make venv`, or on an offline box the kit in
# ../shared/gpu: copy it into .gpu-kit/, `bash .gpu-kit/setup.sh ...`, `export PYTHONPATH=/tmp/site`), the
# SmolLM2 folder (`make model`, or TUNEBOOK_GPU_CHECK_MODEL=DIR), and for the 1B shape the kit's mkmodel.py
# (TUNEBOOK_GPU_KIT=DIR, default .gpu-kit).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

usage() { sed -n '5,6p' "$0" | sed 's/^# \{0,3\}//' >&2; }
ARGS="$*"
OUT=benchmarks/results ONLY="" STEPS=10 PLAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || { echo "gpu_check: --only needs step names" >&2; exit 2; }; ONLY=$2; shift 2 ;;
    --steps) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --steps needs a whole number >= 1" >&2; exit 2; }
             STEPS=$2; shift 2 ;;
    --plan) PLAN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-$ROOT/.venv/bin/python}
# tunebook from this checkout (the GPU kit's PYTHONPATH holds Axolotl, not tunebook); the recipes' data is
# linked into each step's project, so its folder is allowed as a data root.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TUNEBOOK_DATA_ROOTS="$ROOT/recipes/data"
TB=("$PY" -m runner.cli)
MODEL=${TUNEBOOK_GPU_CHECK_MODEL:-$ROOT/.cache/models/smollm2-135m-instruct}
KIT=${TUNEBOOK_GPU_KIT:-$ROOT/.gpu-kit}
WORK=$ROOT/benchmarks/tmp/gpu-check
ALL="train-qlora-t4 train-lora-h100 bench-qlora-t4 bench-lora-a100 bench-lora-h100 bench-qlora-h100 zero3"
SELECTED=${ONLY//,/ }
SELECTED=${SELECTED:-$ALL}
for s in $SELECTED; do
  case " $ALL " in *" $s "*) ;; *) echo "gpu_check: unknown step '$s' (steps: $ALL)" >&2; exit 2 ;; esac
done

GPUS=0
if [ "$PLAN" = 0 ]; then
  GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
  if [ "$GPUS" = 0 ]; then
    echo "gpu_check: no CUDA GPU here (torch sees none); --plan shows what would run" >&2
    exit 3
  fi
  [ -f "$MODEL/config.json" ] || { echo "gpu_check: no model at $MODEL (make model, or TUNEBOOK_GPU_CHECK_MODEL)" >&2; exit 2; }
fi
mkdir -p "$WORK" "$OUT" || exit 2
STEPLOG=$WORK/steps.jsonl
: > "$STEPLOG"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled AXOLOTL_DO_NOT_TRACK=1

# A project of our own under benchmarks/tmp: hr-bot with the preset swapped and the model pinned, so the
# repository's recipes and runs/ are never touched.
project() {  # project PRESET -> prints the project dir
  local dir=$WORK/project-$1
  mkdir -p "$dir/recipes"
  ln -sfn "$ROOT/recipes/presets" "$dir/recipes/presets"
  ln -sfn "$ROOT/recipes/data" "$dir/recipes/data"
  ln -sfn "$ROOT/recipes/tasks" "$dir/recipes/tasks"
  sed -e "s|^preset: .*|preset: $1|" -e "s|^base_model: .*|base_model: $MODEL|" recipes/hr-bot.yaml > "$dir/recipes/hr-bot.yaml"
  [ -d "$dir/.git" ] || git -C "$dir" init -q
  echo "$dir"
}

record() {  # record STEP RC SECONDS RESULT_FILE COMMAND...
  local step=$1 rc=$2 secs=$3 result=$4; shift 4
  "$PY" - "$step" "$rc" "$secs" "$result" "$@" >> "$STEPLOG" <<'EOF'
import json, sys
step, rc, secs, result, *cmd = sys.argv[1:]
print(json.dumps({"step": step, "status": "planned" if rc == "planned" else ("ok" if rc == "0" else "failed"),
                  "exit_code": None if rc == "planned" else int(rc),
                  "seconds": None if secs == "-" else int(secs) / 1000,
                  "result_file": result or None, "command": " ".join(cmd)}))
EOF
}

run_step() {  # run_step STEP RESULT_FILE DIR COMMAND...
  local step=$1 result=$2 dir=$3; shift 3
  if [ "$PLAN" = 1 ]; then echo "plan: (cd $dir && $*)"; record "$step" planned - "$result" "$@"; return; fi
  echo "== $step: $*"
  local t0 rc; t0=$(date +%s%N)
  (cd "$dir" && "$@") > "$WORK/$step.log" 2>&1; rc=$?
  record "$step" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" "$result" "$@"
  [ "$rc" = 0 ] || { echo "   failed (exit $rc): tail of $WORK/$step.log"; tail -5 "$WORK/$step.log"; }
}

L1B=$WORK/models/l1b
if [ "$PLAN" = 0 ] && [[ " $SELECTED " == *" bench-"* || " $SELECTED " == *" zero3 "* ]] && [ ! -f "$L1B/config.json" ]; then
  [ -f "$KIT/mkmodel.py" ] || { echo "gpu_check: the 1B shape needs the GPU kit's mkmodel.py in $KIT (TUNEBOOK_GPU_KIT)" >&2; exit 2; }
  (cd "$WORK" && "$PY" "$KIT/mkmodel.py" l1b 2048 16 8192 32 8 && mkdir -p models && mv /tmp/models/l1b "$L1B") \
    > "$WORK/mkmodel.log" 2>&1 || { echo "gpu_check: mkmodel failed: $WORK/mkmodel.log" >&2; exit 2; }
fi

for step in $SELECTED; do
  case $step in
    train-*)
      preset=${step#train-}; dir=$(project "$preset")
      run_step "$step" "$dir/runs/hr-bot/eval/metrics.json" "$dir" "${TB[@]}" train hr-bot --quiet ;;
    bench-*)
      preset=${step#bench-}; dir=$(project "$preset")
      run_step "$step" "$dir/benchmarks/results" "$dir" "${TB[@]}" bench hr-bot --preset "$preset" --model "$L1B" \
        --vs naive --steps "$STEPS" --warmup 2 --synthetic-rows 2000 ;;
    zero3)
      dir=$(project full-ft-multigpu)
      run_step "$step" "$dir/benchmarks/results" "$dir" env GPUS="$GPUS" "${TB[@]}" bench hr-bot \
        --preset full-ft-multigpu --model "$L1B" --steps "$STEPS" --warmup 2 --synthetic-rows 2000 ;;
  esac
done

# One result file: the steps, each with its own results (eval metrics, bench JSON) folded in.
"$PY" - "$STEPLOG" "$OUT" "$PLAN" "benchmarks/gpu_check.sh $ARGS" <<'EOF'
import datetime as dt, json, os, socket, sys
from pathlib import Path
steplog, out, plan, command = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
steps = [json.loads(l) for l in Path(steplog).read_text().splitlines() if l.strip()]
gpu = "plan"
if not plan:
    try:
        import torch
        gpu = torch.cuda.get_device_name(0)
    except Exception:
        gpu = "unknown"
for s in steps:
    f = Path(s["result_file"]) if s["result_file"] else None
    if s["status"] != "ok" or f is None or not f.exists():
        continue
    if f.is_file():
        m = json.loads(f.read_text())
        s["result"] = {"held_out": m.get("tuned"), "base": m.get("base"), "backend": (m.get("settings") or {}).get("backend"),
                       "device": (m.get("settings") or {}).get("device"), "passed": m.get("passed")}
    else:
        newest = max(f.glob("*.json"), key=lambda p: p.stat().st_mtime, default=None)
        if newest:
            s["result"] = json.loads(newest.read_text())
doc = {"what": "benchmarks/gpu_check.sh", "command": command.strip(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
       "host": socket.gethostname(), "gpu": gpu, "planned_only": plan, "steps": steps,
       "ok": all(s["status"] == "ok" for s in steps) if not plan else None}
name = f"{dt.date.today().isoformat()}-gpu-check-{'plan' if plan else gpu.lower().replace(' ', '-')}.json"
tmp = out / (name + ".tmp")
tmp.write_text(json.dumps(doc, indent=2) + "\n")
os.replace(tmp, out / name)
print(out / name)
EOF
status=$?
[ "$PLAN" = 1 ] && exit $status
grep -q '"status": "failed"' "$STEPLOG" && exit 1
exit $status
