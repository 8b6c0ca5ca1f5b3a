#!/usr/bin/env bash
# Prefix caching (issue 16), all in one run, one server at a time:
# 1. the multi-turn scenario (CONVERSATIONS conversations of TURNS turns each, every turn the whole history
#    after a shared system prompt of about SYSTEM tokens, then a new user message of about USER_TOKENS) against
#    tgi-py with the prefix cache on (--prefix-caching true, the default), with it off, and against llama.cpp's
#    llama-server with its prompt cache (`cache_prompt`, on by default);
# 2. the no-sharing workload (distinct prompts, as bench/contention.sh runs it, at LEVELS streams) with the
#    cache on and off, alternating ROUNDS times, for the "within 3% of cache off" check.
# Then bench/prefix.py's summary: TTFT per turn side by side, the goals, on / off throughput.
# LLAMA_SERVER: the built llama-server binary (docs/benchmarks.md says how); without it, tgi-py only.
#   LLAMA_SERVER=$HOME/llama.cpp/build/bin/llama-server bash bench/prefix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh  # GGUF, wait_up
OUT=${OUT:-bench/results-prefix}
THREADS=${THREADS:-$(nproc)}
CONVERSATIONS=${CONVERSATIONS:-8}
TURNS=${TURNS:-5}
SYSTEM=${SYSTEM:-1000}
USER_TOKENS=${USER_TOKENS:-128}
TOKENS=${TOKENS:-64}
API=${API:-openai-chat}  # the multi-turn wire format (tgi: ChatML rendered by tgi-bench)
LEVELS=${LEVELS:-1,8}
PROMPT=${PROMPT:-128}
DURATION=${DURATION:-40}
ROUNDS=${ROUNDS:-2}
DTYPE=${DTYPE:-bfloat16}
MAX_INPUT=${MAX_INPUT:-4000}  # room for the last turn's history: SYSTEM + TURNS x (USER_TOKENS x 1.5 + TOKENS)
MAX_TOTAL=$((MAX_INPUT + TOKENS))
PORT=3131
mkdir -p "$OUT"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
serve_tgi() {  # log-name true|false
  .venv/bin/python -m launcher --port "$PORT" --shard-uds-path /tmp/prefix-sock --master-port 29661 \
      --dtype "$DTYPE" --threads "$THREADS" --prefix-caching "$2" --max-concurrent-requests 64 \
      --max-input-tokens "$MAX_INPUT" --max-total-tokens "$MAX_TOTAL" > "$OUT/$1.log" 2>&1 & pid=$!
  wait_up "http://127.0.0.1:$PORT/health"
}
conversations() {  # name url api
  .venv/bin/python -m bench --target "$1=$2,api=$3" --scenario multi-turn --conversations "$CONVERSATIONS" \
      --turns "$TURNS" --system-prompt-tokens "$SYSTEM" --prompt-tokens "$USER_TOKENS" --output-tokens "$TOKENS" \
      --prompt-template chatml --request-timeout 600 --no-progress --output "$OUT/$1.json" | tee "$OUT/$1.txt"
}
no_sharing() {  # name output
  .venv/bin/python -m bench --target "$1=http://127.0.0.1:$PORT,api=tgi" --concurrency "$LEVELS" \
      --output-tokens "$TOKENS" --prompt-tokens "$PROMPT" --prompt-template chatml --duration "$DURATION" \
      --request-timeout 120 --no-progress --output "$2" | tee "${2%.json}.txt"
}
counters() {  # where: the prefix cache's counters of the server now up
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^tgi_py_prefix_cache' > "$1" || true
}

multi=()
for cache in on off; do
  flag=$([ "$cache" = on ] && echo true || echo false)
  serve_tgi "tgi-py-cache-$cache" "$flag"
  conversations "tgi-py-cache-$cache" "http://127.0.0.1:$PORT" "$API"
  counters "$OUT/tgi-py-cache-$cache.metrics"
  stop
  multi+=("$OUT/tgi-py-cache-$cache.json")
done
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port 8082 -t "$THREADS" --parallel "$CONVERSATIONS" \
      -c $((CONVERSATIONS * MAX_TOTAL)) --no-webui > "$OUT/llama-server.log" 2>&1 & pid=$!
  wait_up http://127.0.0.1:8082/health
  conversations llama-server http://127.0.0.1:8082 openai-chat
  stop
  multi+=("$OUT/llama-server.json")
fi

plain=()
for round in $(seq "$ROUNDS"); do
  for cache in on off; do
    flag=$([ "$cache" = on ] && echo true || echo false)
    serve_tgi "nosharing-$cache-$round" "$flag"
    no_sharing "nosharing-$cache" "$OUT/nosharing-$cache-$round.json"
    stop
    plain+=("$OUT/nosharing-$cache-$round.json")
  done
done
.venv/bin/python -m bench.prefix --multi-turn "${multi[@]}" --no-sharing "${plain[@]}" | tee "$OUT/summary.md"
echo "tgi-py cache on, its counters after the conversations: $(tr '\n' ' ' < "$OUT/tgi-py-cache-on.metrics")"
