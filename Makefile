# `make run` starts the whole system; `make test` runs every test. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv services test lint run load-test clean-state bench bench-schedule soak clean

# The first install takes about a minute: say so, and show a line per package pip fetches (not
# the hundred "Requirement already satisfied" of a re-install); all of pip's output is kept in
# .venv/pip.log, whose end is shown if pip fails. pip's own exit status decides (dash has no pipefail).
PIP_PROGRESS := awk '/^(Collecting|Processing|Obtaining) / { sub(/ \(from .*/, ""); print "  pip: " $$0; fflush() } \
	/^Installing collected packages:/ { print "  pip: installing " split($$0, names, ", ") " packages"; fflush() }'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "venv: creating $(VENV) ($(PYTHON) -m venv)"; $(PYTHON) -m venv $(VENV); }
	@echo "venv: installing taskfaas and its dependencies (pyproject.toml) into $(VENV) with pip;" \
		"the first time takes about a minute"
	@{ $(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' 2>&1; echo $$? > $(VENV)/pip.status; } \
		| tee $(VENV)/pip.log | $(PIP_PROGRESS); \
		status=$$(cat $(VENV)/pip.status); \
		if [ "$$status" != 0 ]; then echo "venv: pip failed (exit $$status); its output: $(VENV)/pip.log"; \
			tail -n 20 $(VENV)/pip.log; exit 1; fi
	@rm -f $(VENV)/.installed-* $(VENV)/pip.status && touch $@
	@echo "venv: ready ($(BIN)/python; the localfaas command is $(BIN)/localfaas)"

venv: $(STAMP)

services:
	infra/services.sh

lint: venv
	$(BIN)/ruff check .

# The tests use the stack's own RabbitMQ and Redis users (infra/local.env), created by provision.py.
test: venv services lint
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/pytest -q

# `make run LOGS=full` puts every function log line on the console (default: quiet, see README).
run: venv
	infra/run.sh

# Options go in ARGS: make load-test ARGS="-n 500 --no-cache" (all of them: ARGS=--help).
load-test: venv services
	$(BIN)/python bench/load_test.py $(ARGS)

# What earlier runs left on RabbitMQ and Redis (namespaces whose owner is gone, the default
# stack's tasks and cache when idle), listed and removed once confirmed; ARGS=--yes asks nothing.
clean-state: venv services
	$(BIN)/python infra/provision.py
	$(BIN)/python infra/clean_state.py $(ARGS)

# `make bench QUICK=1` is a short smoke run; ARGS go to bench/compare.py (ARGS="--only ours,dramatiq").
bench: venv services
	@# wrk, a C load generator, leaves the 2 cores to what is measured; the Python one does not.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null 2>&1; } \
		|| echo "bench: wrk not installed (apt-get install wrk): using the Python load generator"
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/localfaas_bench.py \
		$(if $(QUICK),--quick)
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/compare.py \
		$(if $(QUICK),--quick) $(ARGS)
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/schedule.py \
		$(if $(QUICK),--only default,one-long)

# Makespan against the ideal for issue 12's mixes, in each dispatch mode (about 4 minutes; also the
# last part of `make bench`). ARGS go to bench/schedule.py (ARGS="--only spread --modes stealing").
bench-schedule: venv services
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/schedule.py $(ARGS)

# 50,000 tasks at a steady rate with a worker SIGKILLed every 3 s; prints where every task ended.
soak: venv services
	$(BIN)/python infra/provision.py
	env $$(grep -E '^(RABBITMQ_URL|REDIS_URL)=' infra/local.env) $(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .localfaas .pytest_cache .ruff_cache
