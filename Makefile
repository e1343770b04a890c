# campaign-live: development, test and benchmark commands.
#
#   make run        the embedded demo (no DATABASE_URL, no BROKER_URL: SQLite, in-process
#                   broker, simulator); with both set, migrates and runs the real server.
#                   Workers are separate processes: start one or more with `make worker`.
#   make worker     a RabbitMQ consumer (needs DATABASE_URL and BROKER_URL)
#   make services   makes sure PostgreSQL and RabbitMQ answer (scripts/services.sh)
#   make test       lint, then the test suite on real PostgreSQL and RabbitMQ
#                   (extra pytest arguments: make test PYTEST_ARGS="-k pipeline -x";
#                   test files run in PYTEST_WORKERS=2 processes at once, 0 for one)
#   make bench      every benchmark, full runs (bench/*.py; results in bench/results/)
#   make bench-peer campaign-live side by side with the Node reference peer (../shared/peer/)
#   make clean      caches and the demo database

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
VENV_STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements-dev.txt
PYTEST_ARGS ?=
# Test files run in this many processes at once (pytest-xdist; each file's tests stay together in
# one process, with its module fixtures). Most of a test is waiting for the processes it started,
# so two share a 2-core box well: the suite took 445 s instead of 680 s on one, all passing.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
# What the tests need besides the virtualenv and the services: Debian's chromium for the
# browser tests, the npm packages of the JS client test (tests/js), Debian's nginx for
# tests/test_nginx.py.
TEST_DEPS := venv services browser-deps js-deps nginx-deps
JS_DIR := tests/js
# Holds the sha256 of package.json + package-lock.json installed (tests/test_js_client.py reads it).
JS_STAMP := $(JS_DIR)/node_modules/.lock-stamp

.DEFAULT_GOAL := help
.PHONY: help venv run worker services lint test browser-deps js-deps nginx-deps bench bench-peer clean

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

# Debian's chromium, which Playwright drives headless (tests/browser); never a browser download.
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "make browser-deps: installing Debian's chromium for the browser tests"; \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo="sudo -n"; fi; \
		$$sudo apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium fonts-liberation || exit 1; \
	fi

# Debian's nginx for tests/test_nginx.py (deploy/nginx.conf in front of two servers). The test
# starts its own instance (its own config, port and prefix); the package's service is not used.
nginx-deps:
	@if [ ! -x /usr/sbin/nginx ]; then \
		echo "make nginx-deps: installing Debian's nginx for tests/test_nginx.py"; \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo="sudo -n"; fi; \
		$$sudo apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			nginx || exit 1; \
	fi

# npm ci in tests/js when package.json or package-lock.json changed since the last install.
js-deps: $(JS_STAMP)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make js-deps: npm not found; install Node.js >= 20 with npm" >&2; exit 1; }
	cd $(JS_DIR) && npm ci --no-audit --no-fund
	cat $(JS_DIR)/package.json $(JS_DIR)/package-lock.json | sha256sum | cut -d' ' -f1 > $@

# The suite starts many servers, workers and child processes: with PYTHONDONTWRITEBYTECODE set
# (as in CI's environment) each compiled the project's modules again (`import app`: 1.7 s, 1.35 s
# with them compiled); compiled once here, they are read from __pycache__ (ignored by git).
test: $(TEST_DEPS)
	$(MAKE) --no-print-directory lint
	$(PY) -m compileall -q -x '(\.venv|node_modules|\.git)/' .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Full runs, one after the other (they share the machine's cores): about 20 minutes. A --quick
# run of each is part of `make test` (tests/test_bench_quick.py).
BENCHMARKS := ingest latency polling_vs_socket poll_request_cost soak

bench: venv services
	@for name in $(BENCHMARKS); do $(PY) bench/$$name.py || exit 1; done
	$(MAKE) --no-print-directory bench-peer

bench-peer: venv services
	$(PY) bench/vs_peer.py

clean:
	rm -rf instance .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
