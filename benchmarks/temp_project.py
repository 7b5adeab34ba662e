"""A recipe trained in a throwaway project, for the benchmark scripts that compare settings (early_stop.py,
lora_variants.py): presets linked to this checkout's, the data copied in, `tunebook train`, then what the run
recorded (manifest, kept epoch, eval metrics, seconds per step) read back before the project is deleted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.train import trainlog  # noqa: E402

MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"


def train(recipe: str, data: dict[str, Path], stage: str = "sft") -> dict:
    """Train `recipe` (YAML text; its data paths relative to the project, e.g. data/train.jsonl) with `data`
    (project path → file to copy) in a fresh project; returns the run's facts."""
    with tempfile.TemporaryDirectory(prefix="tunebook-bench-") as tmp:
        proj = Path(tmp)
        (proj / "recipes").mkdir()
        os.symlink(ROOT / "recipes" / "presets", proj / "recipes" / "presets")
        for dest, src in data.items():
            (proj / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, proj / dest)
        (proj / "recipes" / "bench.yaml").write_text(recipe)
        subprocess.run(["git", "init", "-q", "."], cwd=proj, check=True)
        cmd = [str(ROOT / ".venv" / "bin" / "tunebook"), "train", "bench", "--quiet"]
        t0 = time.time()
        r = subprocess.run(cmd, cwd=proj, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"tunebook train failed ({r.returncode}):\n{r.stderr[-3000:]}")
        run = proj / "runs" / "bench"
        st = json.loads((run / "manifest.json").read_text())["stages"][stage]
        best_path = run / stage / "best_epoch.json"
        best = json.loads(best_path.read_text()) if best_path.is_file() else {}
        metrics_path = run / "eval" / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        stop_path = run / stage / "early_stop.json"
        rule = json.loads(stop_path.read_text()).get("rule") if stop_path.is_file() else None
        hist = trainlog.history(run / stage)
        summ = trainlog.summary(hist)
        steps = summ.get("logged_steps")  # one per optimizer step (logging_steps: 1, recipes/presets/defaults.yaml)
        return {
            "early_stopping_rule": rule,
            "epochs_planned": st.get("epochs_planned"), "epochs_run": st.get("epochs_run"),
            "stopped_early": st.get("stopped_early"), "stop_reason": st.get("stop_reason"),
            "eval_loss_per_epoch": best.get("eval_loss_per_epoch"), "kept_checkpoint": best.get("checkpoint"),
            "held_out": metrics.get("tuned"),
            "train_seconds": st.get("seconds"),
            # Axolotl's train_runtime over the steps taken: the per-epoch evaluations and saves included.
            "train_runtime_s": summ.get("train_runtime_s"), "steps": steps,
            "seconds_per_step": round(summ["train_runtime_s"] / steps, 3) if summ.get("train_runtime_s") and steps
            else None,
            "tunebook_train_wall_seconds": round(wall, 1),
            "messages": [ln for ln in r.stderr.splitlines() if ln.startswith("tunebook: " + stage)],
        }


def write_result(name: str, result: dict) -> Path:
    """benchmarks/results/<name>-<date>.json, written whole (temp file, then rename)."""
    import datetime as dt

    out = ROOT / "benchmarks" / "results" / f"{name}-{dt.date.today().isoformat()}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return out


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").is_file() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
