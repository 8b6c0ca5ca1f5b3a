#!/usr/bin/env bash
# --quantize side by side (issue 18): tgi-py bf16, bf16 + int8 and bf16 + int4 weights, then llama.cpp's
# llama-server on the Q4_1 GGUF the embedded model comes from, one after another on this machine; then
# the in-process engine step (ms per decode step, weight GB/s) for the same three configurations.
#   LLAMA_SERVER=path/to/llama-server bash bench/quant_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # GGUF, wait_up
OUT=${OUT:-bench/results-quantize}
LEVELS=${LEVELS:-1,16}
TOKENS=${TOKENS:-64}
PROMPT=${PROMPT:-128}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
run() {  # name url api
  .venv/bin/tgi-bench --target "$1=$2,api=$3" --concurrency "$LEVELS" --output-tokens "$TOKENS" \
      --prompt-tokens "$PROMPT" --prompt-template chatml --no-progress --output "$OUT/$1.json" | tee "$OUT/$1.txt"
}
port=3110
for quantize in none int8 int4; do
  port=$((port + 1))
  .venv/bin/tgi-launch --port $port --shard-uds-path /tmp/cmp-q-$quantize --master-port $((29600 + port - 3110)) \
      --dtype bfloat16 $([ "$quantize" != none ] && echo --quantize $quantize) --max-concurrent-requests 64 \
      --max-input-tokens 1024 --max-total-tokens 1536 > "$OUT/tgi-py-$quantize.log" 2>&1 & pids+=($!)
  wait_up http://127.0.0.1:$port/health; run tgi-py-bf16-$quantize http://127.0.0.1:$port tgi
  kill "${pids[-1]}"; wait "${pids[-1]}" || true
done
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port 8080 --parallel 16 -c $((16 * 2048)) --no-webui \
      > "$OUT/llama-server.log" 2>&1 & pids+=($!)
  wait_up http://127.0.0.1:8080/health; run llama-server http://127.0.0.1:8080 openai-chat; kill "${pids[-1]}"
fi
.venv/bin/python -m bench.combine "$OUT"/tgi-py-bf16-*.json $([ -n "${LLAMA_SERVER:-}" ] && echo "$OUT"/llama-server.json) \
    | tee "$OUT/table.md"
if [ "${ENGINE_STEP:-1}" != 0 ]; then
  .venv/bin/python -m bench.engine_step --batch 1,16,32 --dtype bfloat16 --quantize none,int8,int4 2>/dev/null \
      | tee "$OUT/engine-step.txt"
fi
