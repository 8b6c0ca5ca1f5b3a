#!/usr/bin/env bash
# A noisy neighbour: tgi-py and llama.cpp's llama-server, each at 1 and 8 streams, first on a quiet
# machine, then beside one busy-looping process (`python3 -c 'while True: pass'`), all in one run.
# Both servers get the same thread count (THREADS, default: every CPU this process may use).
# LLAMA_SERVER: the built llama-server binary (docs/benchmarks.md says how); without it, tgi-py only.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # GGUF, wait_up
OUT=${OUT:-bench/results-contention}
THREADS=${THREADS:-$(nproc)}
LEVELS=${LEVELS:-1,8}
TOKENS=${TOKENS:-64}
PROMPT=${PROMPT:-128}
DURATION=${DURATION:-40}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
pids=()
busy=""
cleanup() {
  [ -n "$busy" ] && kill "$busy" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
levels() {  # name url api
  .venv/bin/tgi-bench --target "$1=$2,api=$3" --concurrency "$LEVELS" --output-tokens "$TOKENS" \
      --prompt-tokens "$PROMPT" --prompt-template chatml --duration "$DURATION" --request-timeout 120 \
      --no-progress --output "$OUT/$1.json" | tee "$OUT/$1.txt"
}
quiet_then_busy() {  # name url api
  levels "$1-quiet" "$2" "$3"
  python3 -c 'while True: pass' & busy=$!
  sleep 1
  levels "$1-busy" "$2" "$3"
  kill "$busy"; wait "$busy" 2>/dev/null || true; busy=""
}
.venv/bin/python -m launcher --port 3111 --shard-uds-path /tmp/contention --master-port 29621 --dtype "$DTYPE" \
    --threads "$THREADS" --max-concurrent-requests 64 --max-input-tokens 1024 --max-total-tokens 1536 \
    > "$OUT/tgi-py.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:3111/health
quiet_then_busy tgi-py http://127.0.0.1:3111 tgi
kill "${pids[-1]}"; wait "${pids[-1]}" || true
results=("$OUT"/tgi-py-quiet.json "$OUT"/tgi-py-busy.json)
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port 8081 -t "$THREADS" --parallel 8 -c $((8 * 2048)) --no-webui \
      > "$OUT/llama-server.log" 2>&1 & pids+=($!)
  wait_up http://127.0.0.1:8081/health
  quiet_then_busy llama-server http://127.0.0.1:8081 openai-chat
  kill "${pids[-1]}"
  results+=("$OUT"/llama-server-quiet.json "$OUT"/llama-server-busy.json)
fi
.venv/bin/python -m bench.combine "${results[@]}" | tee "$OUT/table.md"
.venv/bin/python -m bench.contention "${results[@]}" | tee "$OUT/ratios.md"
