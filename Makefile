# campaign-live: development, test and benchmark commands.
#
#   make run        the embedded demo (no DATABASE_URL, no BROKER_URL: SQLite, in-process
#                   broker, simulator); with both set, migrates and runs the real server.
#                   Workers are separate processes: start one or more with `make worker`.
#   make worker     a RabbitMQ consumer (needs DATABASE_URL and BROKER_URL)
#   make services   makes sure PostgreSQL and RabbitMQ answer (scripts/services.sh)
#   make test       lint, then the test suite on real PostgreSQL and RabbitMQ
#                   (extra pytest arguments: make test PYTEST_ARGS="-k pipeline -x")
#   make bench      the ingest and latency benchmarks
#   make clean      caches and the demo database

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
VENV_STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements-dev.txt
PYTEST_ARGS ?=
# What the tests need besides the virtualenv and the services (browser-deps is a hook for the
# browser tests to come).
TEST_DEPS := venv services browser-deps

.DEFAULT_GOAL := help
.PHONY: help venv run worker services lint test browser-deps bench clean

help:
	@sed -n 's/^#   //p' Makefile

venv: $(VENV_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changed since the last install.
$(VENV_STAMP): $(REQUIREMENTS) | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: venv
	@if [ -z "$$DATABASE_URL" ] && [ -z "$$BROKER_URL" ]; then \
		echo "make run: neither DATABASE_URL nor BROKER_URL set: running the embedded demo"; \
	elif [ -n "$$DATABASE_URL" ] && [ -n "$$BROKER_URL" ]; then \
		echo "make run: migrating, then serving (start workers with 'make worker')"; \
		$(PY) -m flask --app app db upgrade || exit 1; \
	else \
		echo "make run: set both DATABASE_URL and BROKER_URL, or neither for the demo" >&2; exit 1; \
	fi
	$(PY) app.py

worker: venv
	$(PY) -m worker

services:
	bash scripts/services.sh

lint: venv
	$(RUFF) check .

# Placeholder: will install the browser (chromium) for the browser tests.
browser-deps:
	@:

test: $(TEST_DEPS)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv services
	$(PY) bench/ingest.py
	$(PY) bench/latency.py

clean:
	rm -rf instance .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
