#!/usr/bin/env bash
# tunebook image entrypoint (docs/deploy.md).
#
#   docker run IMAGE                      train $RECIPE (`make train RECIPE=$RECIPE`)
#   docker run IMAGE tunebook validate x  run that command instead
#
# `tunebook launch` does not use this entrypoint: SkyPilot starts the image and runs the task's own `setup:` and
# `run:` (`make train RECIPE=...`) in its working directory.
#
# Environment: RECIPE (required), TUNEBOOK_RUN_NAME (the recipe's `name:` when it is not its file name),
# GPUS / NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT (multi-GPU, multi-node), TUNEBOOK_PERSIST_DIR (a volume:
# runs/ lives there so a restarted container resumes).
set -uo pipefail
cd /app

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

: "${RECIPE:?set RECIPE to the name of the recipe to train (recipes/<name>.yaml)}"
RUN_NAME=${TUNEBOOK_RUN_NAME:-$RECIPE}   # the recipe's `name:` (its folder under runs/), when it differs
for n in "$RECIPE" "$RUN_NAME"; do
  case "$n" in *[!A-Za-z0-9._-]*|.*) echo "tunebook: bad recipe name '$n'" >&2; exit 2;; esac
done

if [ -n "${TUNEBOOK_PERSIST_DIR:-}" ] && [ -d "$TUNEBOOK_PERSIST_DIR" ]; then
  mkdir -p "$TUNEBOOK_PERSIST_DIR/runs"
  if [ ! -L runs ]; then rm -rf runs; fi
  ln -sfn "$TUNEBOOK_PERSIST_DIR/runs" runs
fi

mkdir -p "runs/$RUN_NAME"
LOG="runs/$RUN_NAME/container.log"
echo "tunebook: $(date -u +%FT%TZ) training $RECIPE in $(hostname) (GPUS=${GPUS:-all})" | tee -a "$LOG"
TRAIN=""
stop() {  # docker stop: stop training, keep what exists (bash as PID 1 would otherwise ignore SIGTERM)
  [ -n "$TRAIN" ] && kill -TERM "$TRAIN" 2>/dev/null
  exit 143
}
trap stop TERM INT

( make train RECIPE="$RECIPE" 2>&1 | tee -a "$LOG"; exit "${PIPESTATUS[0]}" ) &
TRAIN=$!
wait "$TRAIN"
rc=$?
echo "tunebook: $(date -u +%FT%TZ) training exited with $rc" | tee -a "$LOG"
exit "$rc"
