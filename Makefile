# `make run` starts the whole system; `make test` runs every test. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv services test lint run load-test bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

services:
	infra/services.sh

lint: venv
	$(BIN)/ruff check .

# The tests use the stack's own RabbitMQ and Redis users (infra/local.env), created by provision.py.
test: venv services lint
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/pytest -q

run: venv
	infra/run.sh

load-test: venv services
	$(BIN)/python bench/load_test.py

bench: venv services
	@# wrk, a C load generator, leaves the 2 cores to what is measured; the Python one does not.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null 2>&1; } \
		|| echo "bench: wrk not installed (apt-get install wrk): using the Python load generator"
	$(BIN)/python bench/localfaas_bench.py
	$(BIN)/python bench/compare.py

# 50,000 tasks at a steady rate with a worker SIGKILLed every 3 s; prints where every task ended.
soak: venv services
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .localfaas .pytest_cache .ruff_cache
