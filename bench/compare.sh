#!/usr/bin/env bash
# Side-by-side run behind docs/benchmarks.md: tgi-py (fp32 and bf16), transformers serve
# --continuous-batching (fp32, same safetensors) and llama.cpp's llama-server (Q4_1 GGUF), one after
# another on the same machine, plus the machine's measured memory read bandwidth.
# Needs the peers set up as docs/benchmarks.md describes: LLAMA_SERVER (the built binary) and
# SERVE_DEPS (a --target dir with fastapi, uvicorn, rich for `transformers serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # GGUF, wait_up
OUT=${OUT:-bench/results}
LEVELS=${LEVELS:-1,4,16,32}
TOKENS=${TOKENS:-64}
PROMPT=${PROMPT:-128}
mkdir -p "$OUT"
MODEL=${TGI_PY_CACHE:-$HOME/.cache/tgi-py}/SmolLM2-135M-Instruct
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

.venv/bin/python bench/membw.py | tee "$OUT/membw.txt"
# The engine alone, in-process: ms per decode step, tokens/s and weight bandwidth, CPU kernels on and off
.venv/bin/python -m bench.engine_step --batch 1,4,16,32 --paths fused,layers,torch 2>/dev/null | tee "$OUT/engine-step.txt"
run() {  # name url api
  .venv/bin/tgi-bench --target "$1=$2,api=$3" --concurrency "$LEVELS" --output-tokens "$TOKENS" \
      --prompt-tokens "$PROMPT" --prompt-template chatml --no-progress --output "$OUT/$1.json" | tee "$OUT/$1.txt"
}
overhead_at_32() {  # name url: the router's per-token overhead over two separate 32-stream runs
  # The load generator shares the 2 cores with the server: first at normal priority, then as SCHED_BATCH
  # (`chrt -b 0`: same CPU share, but its wake-ups on each token no longer preempt the router mid-step,
  # as a client on another machine never would).
  for mode in normal sched-batch; do
    local client=()
    [ "$mode" = sched-batch ] && client=(chrt -b 0)
    .venv/bin/python -m bench.overhead snapshot "$2" > "$OUT/$1-overhead-before.json"
    "${client[@]}" .venv/bin/tgi-bench --target "$1-32=$2,api=tgi" --concurrency 32 --output-tokens "$TOKENS" \
        --prompt-tokens "$PROMPT" --prompt-template chatml --no-progress > /dev/null
    .venv/bin/python -m bench.overhead delta "$2" "$OUT/$1-overhead-before.json" | tee "$OUT/$1-overhead-32-$mode.json"
  done
}
.venv/bin/tgi-launch --port 3101 --shard-uds-path /tmp/cmp-f32 --master-port 29611 --max-concurrent-requests 64 \
    --max-input-tokens 1024 --max-total-tokens 1536 > "$OUT/tgi-py-fp32.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:3101/health; run tgi-py-fp32 http://127.0.0.1:3101 tgi
overhead_at_32 tgi-py-fp32 http://127.0.0.1:3101; kill "${pids[-1]}"; wait "${pids[-1]}" || true
.venv/bin/tgi-launch --port 3102 --shard-uds-path /tmp/cmp-bf16 --master-port 29612 --dtype bfloat16 \
    --max-concurrent-requests 64 --max-input-tokens 1024 --max-total-tokens 1536 > "$OUT/tgi-py-bf16.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:3102/health; run tgi-py-bf16 http://127.0.0.1:3102 tgi
overhead_at_32 tgi-py-bf16 http://127.0.0.1:3102; kill "${pids[-1]}"; wait "${pids[-1]}" || true
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port 8080 --parallel 16 -c $((16 * 2048)) --no-webui \
      > "$OUT/llama-server.log" 2>&1 & pids+=($!)
  wait_up http://127.0.0.1:8080/health; run llama-server http://127.0.0.1:8080 openai-chat; kill "${pids[-1]}"
fi
if [ -n "${SERVE_DEPS:-}" ]; then
  PYTHONPATH="$SERVE_DEPS" .venv/bin/transformers serve --continuous-batching --device cpu --dtype float32 \
      --port 8000 "$MODEL" > "$OUT/transformers-serve.log" 2>&1 & pids+=($!)
  wait_up http://127.0.0.1:8000/health
  .venv/bin/tgi-bench --target "transformers-serve=http://127.0.0.1:8000,api=openai-chat,ignore_eos=off" \
      --extra-body "transformers-serve={\"generation_config\": \"{\\\"max_new_tokens\\\": $TOKENS, \\\"min_new_tokens\\\": $TOKENS, \\\"do_sample\\\": false}\"}" \
      --concurrency "$LEVELS" --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml \
      --no-progress --output "$OUT/transformers-serve.json" | tee "$OUT/transformers-serve.txt"
fi
# One table and one chart for all the servers of this run
.venv/bin/python -m bench.combine "$OUT"/tgi-py-fp32.json "$OUT"/tgi-py-bf16.json \
    $([ -n "${SERVE_DEPS:-}" ] && echo "$OUT"/transformers-serve.json) \
    $([ -n "${LLAMA_SERVER:-}" ] && echo "$OUT"/llama-server.json) --chart "$OUT/chart.png" | tee "$OUT/table.md"
