#!/usr/bin/env bash
# Structured output overhead (issue 17), in one run against one tgi-py server on the embedded model:
# LEVEL streams of free text, of one JSON schema (bench/schemas/people.json: 40+ objects, so every answer
# runs to its TOKENS), and of that schema made new to the server in every request (--fresh-schema: each one
# compiled by the router and by the shard), alternating ROUNDS times after one uncounted warm-up run; then
# bench/structured.py's summary (the median round of each).
#   bash bench/structured.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # wait_up
OUT=${OUT:-bench/results-structured}
THREADS=${THREADS:-$(nproc)}
LEVEL=${LEVEL:-16}
TOKENS=${TOKENS:-128}
PROMPT=${PROMPT:-128}
DURATION=${DURATION:-40}
ROUNDS=${ROUNDS:-3}
DTYPE=${DTYPE:-bfloat16}
SCHEMA=${SCHEMA:-bench/schemas/people.json}
PORT=3141
mkdir -p "$OUT"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
.venv/bin/python -m launcher --port "$PORT" --shard-uds-path /tmp/structured-sock --master-port 29671 \
    --dtype "$DTYPE" --threads "$THREADS" --max-concurrent-requests 64 > "$OUT/server.log" 2>&1 & pid=$!
wait_up "http://127.0.0.1:$PORT/health"
run() {  # name output [tgi-bench options...]
  local name=$1 output=$2
  shift 2
  .venv/bin/python -m bench --target "$name=http://127.0.0.1:$PORT,api=tgi" --concurrency "$LEVEL" \
      --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml --duration "$DURATION" \
      --request-timeout 120 --no-progress --output "$output" "$@" | tee "${output%.json}.txt"
}
run warmup "$OUT/warmup.json" --json-schema "$SCHEMA"  # first requests warm the thread governor: not counted
results=()
for round in $(seq "$ROUNDS"); do
  run free "$OUT/free-$round.json"
  run schema "$OUT/schema-$round.json" --json-schema "$SCHEMA"
  run fresh "$OUT/fresh-$round.json" --json-schema "$SCHEMA" --fresh-schema
  results+=("$OUT/free-$round.json" "$OUT/schema-$round.json" "$OUT/fresh-$round.json")
done
.venv/bin/python -m bench.structured "${results[@]}" | tee "$OUT/summary.md"
grep -c "request .* done" "$OUT/server.log" | sed 's/^/requests served: /'
