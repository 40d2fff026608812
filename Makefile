# Entry points. `make test` works on a fresh machine: it sets up first (hack/setup.sh),
# then lints, then runs every test tier (unit, integration, e2e) against real services.

SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup lint test test-unit rehearsal

# The unit and integration tiers run first (a quarter of the time, so a broken
# change fails fast), on two workers: most of their time is spent waiting on real
# processes and scrapes. e2e scenarios spend most of their time waiting through
# holds and scrape intervals (the shipped configs alone hold for half an hour), so
# that tier runs on three workers, each with its own control plane and test bed.
# A test that fails is run once more (and reported as rerun): test beds sharing
# two cores stretch timings; one that fails twice fails the run.
TEST_WORKERS ?= 3
UNIT_WORKERS ?= 2

setup:
	hack/setup.sh

lint:
	$(VENV)/ruff check
	$(VENV)/ruff format --check
	$(VENV)/mypy
	$(VENV)/lint-imports

# Each step prints its duration, so a slow CI run shows where the time went.
test: setup
	@start=$$SECONDS; $(MAKE) --no-print-directory lint && echo "[test] lint: $$((SECONDS - start))s"
	@start=$$SECONDS; $(VENV)/pytest -n $(UNIT_WORKERS) --reruns 1 --durations=15 tests/unit tests/integration && echo "[test] unit and integration: $$((SECONDS - start))s"
	@start=$$SECONDS; $(VENV)/pytest -n $(TEST_WORKERS) --reruns 1 --durations=15 tests/e2e && echo "[test] e2e: $$((SECONDS - start))s"

test-unit:
	$(VENV)/pytest tests/unit

# The quick start: set up, then rehearse a good and a bad release on the local
# control plane, narrated. Leaves nothing running.
rehearsal: setup
	$(VENV)/python -m autocanary_testbed.rehearsal
