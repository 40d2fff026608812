# Entry points. `make test` works on a fresh machine: it sets up first (hack/setup.sh),
# then lints, then runs every test tier (unit, integration, e2e) against real services.

SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup lint test test-unit rehearsal

# Every tier (unit, integration, e2e) runs in one pytest session on four workers,
# each with its own control plane and test beds, the longest scenarios first (the
# shipped configs hold for many minutes each; tests/conftest.py orders them, and
# --maxschedchunk 1 hands them out one at a time as workers free up). The
# tests spend most of their time waiting through holds and scrape intervals, not on
# the CPU, and one session leaves no worker idle at the end of a tier.
# A test that fails is run once more (and reported as rerun): test beds sharing
# two cores stretch timings; one that fails twice fails the run. `-r aR` names the
# reruns in the summary, so a CI log shows which tests needed one.
TEST_WORKERS ?= 4

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
	@start=$$SECONDS; $(VENV)/pytest -n $(TEST_WORKERS) --maxschedchunk 1 --reruns 1 -r aR --durations=25 tests && echo "[test] unit, integration and e2e: $$((SECONDS - start))s"

test-unit:
	$(VENV)/pytest tests/unit

# The quick start: set up what it needs (not the test-only builds: Traefik, Argo
# Rollouts, helm), then rehearse a good and a bad release on the local control
# plane, narrated. Leaves nothing running.
rehearsal:
	hack/setup.sh --rehearsal
	$(VENV)/python -m autocanary_testbed.rehearsal
