#!/usr/bin/env bash
# tunebook image entrypoint (docs/deploy.md).
#
#   docker run IMAGE                      train $RECIPE (`make train RECIPE=$RECIPE`), then upload runs/$RECIPE/
#                                         to $TUNEBOOK_ARTIFACTS (any fsspec URL) when it is set
#   docker run IMAGE tunebook validate x  run that command instead
#
# Environment: RECIPE (required), TUNEBOOK_RUN_NAME (the recipe's `name:` when it is not its file name), TUNEBOOK_ARTIFACTS, TUNEBOOK_RECIPE_B64 (a recipe file sent by `tunebook launch`,
# written to recipes/$RECIPE.yaml), GPUS / NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT (multi-GPU, multi-node),
# TUNEBOOK_PERSIST_DIR (a volume: runs/ lives there so a restarted container resumes), TUNEBOOK_HOLD=1 (after
# the upload, wait to be terminated instead of exiting: RunPod restarts containers that exit),
# TUNEBOOK_HEARTBEAT_S (default 30), TUNEBOOK_UPLOAD_CHECKPOINTS=1.
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
TB=/app/.venv/bin/tunebook

if [ -n "${TUNEBOOK_PERSIST_DIR:-}" ] && [ -d "$TUNEBOOK_PERSIST_DIR" ]; then
  mkdir -p "$TUNEBOOK_PERSIST_DIR/runs"
  if [ ! -L runs ]; then rm -rf runs; fi
  ln -sfn "$TUNEBOOK_PERSIST_DIR/runs" runs
fi
if [ -n "${TUNEBOOK_RECIPE_B64:-}" ]; then
  printf '%s' "$TUNEBOOK_RECIPE_B64" | base64 -d > "recipes/.$RECIPE.yaml.tmp" \
    && mv "recipes/.$RECIPE.yaml.tmp" "recipes/$RECIPE.yaml"
fi
unset TUNEBOOK_RECIPE_B64

mkdir -p "runs/$RUN_NAME"
LOG="runs/$RUN_NAME/container.log"
echo "tunebook: $(date -u +%FT%TZ) training $RECIPE in $(hostname) (GPUS=${GPUS:-all})" | tee -a "$LOG"

HB=""
if [ -n "${TUNEBOOK_ARTIFACTS:-}" ]; then
  "$TB" artifacts status "$TUNEBOOK_ARTIFACTS" starting || echo "tunebook: cannot write to $TUNEBOOK_ARTIFACTS" >&2
  "$TB" artifacts heartbeat "$RUN_NAME" "$TUNEBOOK_ARTIFACTS" --log "$LOG" --interval "${TUNEBOOK_HEARTBEAT_S:-30}" &
  HB=$!
fi

TRAIN=""
stop() {  # docker stop / pod termination: stop training, keep what exists
  [ -n "$TRAIN" ] && kill -TERM "$TRAIN" 2>/dev/null
  [ -n "$HB" ] && kill "$HB" 2>/dev/null
  exit 143
}
trap stop TERM INT

( make train RECIPE="$RECIPE" 2>&1 | tee -a "$LOG"; exit "${PIPESTATUS[0]}" ) &
TRAIN=$!
wait "$TRAIN"
rc=$?
TRAIN=""
[ -n "$HB" ] && kill "$HB" 2>/dev/null
echo "tunebook: $(date -u +%FT%TZ) training exited with $rc" | tee -a "$LOG"

if [ -n "${TUNEBOOK_ARTIFACTS:-}" ]; then
  for i in 1 2 3; do
    "$TB" artifacts push "$RUN_NAME" "$TUNEBOOK_ARTIFACTS" --log "$LOG" --exit-code "$rc" && break
    echo "tunebook: upload attempt $i failed" >&2
    sleep $((i * 10))
  done
fi

if [ "${TUNEBOOK_HOLD:-0}" = 1 ]; then
  echo "tunebook: done (exit $rc); waiting to be terminated"
  while true; do sleep 3600 & wait $!; done
fi
exit "$rc"
