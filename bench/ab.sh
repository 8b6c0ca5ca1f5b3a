#!/usr/bin/env bash
# Two versions of tgi-py side by side in one run, on a quiet machine: BASE (a git ref, checked out in a
# temporary worktree) and the working tree, alternating ROUNDS times (this machine's memory bandwidth
# moves by half within minutes: alternating spreads that over both), at each of LEVELS streams.
#   BASE=af38857 bash bench/ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # GGUF, wait_up
BASE=${BASE:?a git ref to compare with, e.g. BASE=HEAD~3}
OUT=${OUT:-bench/results-ab}
LEVELS=${LEVELS:-1,8,32}
ROUNDS=${ROUNDS:-2}
TOKENS=${TOKENS:-64}
PROMPT=${PROMPT:-128}
DURATION=${DURATION:-25}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
base_tree=$(mktemp -d /tmp/tgi-ab-XXXXXX)
git worktree add --detach "$base_tree" "$BASE" >/dev/null
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; git worktree remove --force "$base_tree"; }
trap cleanup EXIT
serve_and_measure() {  # name tree round
  (cd "$2" && exec "$OLDPWD/.venv/bin/python" -m launcher --port 3121 --shard-uds-path /tmp/ab-sock \
      --master-port 29641 --dtype "$DTYPE" --max-concurrent-requests 64 --max-input-tokens 1024 \
      --max-total-tokens 1536) > "$OUT/$1-$3.log" 2>&1 & pid=$!
  wait_up http://127.0.0.1:3121/health
  .venv/bin/tgi-bench --target "$1=http://127.0.0.1:3121,api=tgi" --concurrency "$LEVELS" \
      --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml --duration "$DURATION" \
      --no-progress --output "$OUT/$1-$3.json" | grep -E "^$1 "
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
for round in $(seq "$ROUNDS"); do
  serve_and_measure base "$base_tree" "$round"
  serve_and_measure new "$PWD" "$round"
done
.venv/bin/python -m bench.combine "$OUT"/base-*.json "$OUT"/new-*.json | tee "$OUT/table.md"
