#!/usr/bin/env bash
# N-gram speculation (issue 18), one server at a time, alternating ROUNDS times: tgi-py on the embedded model
# without speculation and with --speculate N, same configuration otherwise, on
# 1. the input-grounded prompt set (tgi-bench --prompt-set grounded: rewrite / summarize / correct / list a
#    public-domain passage) at 1 stream, each request ending at its EOS (--ignore-eos off);
# 2. the generic chat prompts at GENERIC_LEVELS streams (--output-tokens each, as bench/ab.sh runs them).
# Each server's speculation counters (/metrics) are saved next to its results; bench.combine tabulates them.
# QUANTIZE=int4 (or int8) serves both with --quantize.
#   N=3 ROUNDS=2 bash bench/speculation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # wait_up
OUT=${OUT:-bench/results-speculation}
N=${N:-3}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-25}
TOKENS=${TOKENS:-128}
PROMPT=${PROMPT:-256}
GENERIC_LEVELS=${GENERIC_LEVELS:-1,16}
DTYPE=${DTYPE:-bfloat16}
QUANTIZE=${QUANTIZE:-}
PORT=3141
mkdir -p "$OUT"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
measure() {  # name speculate round
  .venv/bin/python -m launcher --port "$PORT" --shard-uds-path /tmp/spec-sock --master-port 29671 \
      --dtype "$DTYPE" --speculate "$2" ${QUANTIZE:+--quantize "$QUANTIZE"} --max-concurrent-requests 64 --max-input-tokens 1024 \
      --max-total-tokens 1536 > "$OUT/$1-$3.log" 2>&1 & pid=$!
  wait_up "http://127.0.0.1:$PORT/health"
  .venv/bin/python -m bench --target "$1-grounded=http://127.0.0.1:$PORT,api=tgi" --prompt-set grounded \
      --concurrency 1 --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml \
      --ignore-eos off --duration "$DURATION" --no-progress --output "$OUT/$1-grounded-$3.json" | grep -E "^$1"
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^tgi_py_speculative' > "$OUT/$1-grounded-$3.metrics" || true
  .venv/bin/python -m bench --target "$1-generic=http://127.0.0.1:$PORT,api=tgi" --concurrency "$GENERIC_LEVELS" \
      --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml --duration "$DURATION" \
      --no-progress --output "$OUT/$1-generic-$3.json" | grep -E "^$1"
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^tgi_py_speculative' > "$OUT/$1-all-$3.metrics" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
for round in $(seq "$ROUNDS"); do
  measure off 0 "$round"
  measure "spec$N" "$N" "$round"
done
.venv/bin/python -m bench.combine "$OUT"/*.json | tee "$OUT/table.md"
for f in "$OUT"/*.metrics; do echo "$f: $(tr '\n' ' ' < "$f")"; done | tee -a "$OUT/table.md"
