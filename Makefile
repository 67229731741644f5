# metricsmith — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test test-deep install browser lint format bench down status clean help

help:
	@echo "make demo   - install, start the embedded servers, generate a sample year, run the pipeline, print a summary"
	@echo "make test   - install and run the test suite (against METRICSMITH_* servers, or the embedded default)"
	@echo "make lint   - ruff (complexity <= 12) + mypy (--strict on core) + sqlfluff (models, macros)"
	@echo "make bench  - run every benchmark in bench/ (prints ratios; BENCHES=name for one)"
	@echo "make down   - stop the embedded servers"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	@touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the dashboard's browser tests (Playwright drives it; it never downloads a
# browser). Installed with apt when missing and running as root; otherwise those tests skip, saying why.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium: the browser tests will skip"; \
	else echo "no $(CHROMIUM) and not root: the browser tests will skip (apt-get install chromium as root)"; fi

demo: $(STAMP)
	$(BIN)/metricsmith demo

# the suite as two pytest processes side by side (the Spark modules and the rest: tests/run_tests.sh);
# PYTEST_ARGS=... runs plain pytest with those arguments
test: $(STAMP) browser
	PYTHON=$(BIN)/python tests/run_tests.sh $(PYTEST_ARGS)

test-deep: $(STAMP) browser
	METRICSMITH_DEEP=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests flows bench
	$(BIN)/mypy
	$(BIN)/mypy --strict src/metricsmith/core
	$(BIN)/sqlfluff lint models macros

format: $(STAMP)
	$(BIN)/ruff check --fix src tests flows bench
	$(BIN)/ruff format src tests flows bench

BENCHES := ingest rollups custom_metrics realtime cache api

# every bench in bench/, one after the other (each prints its ratios); one alone: make bench BENCHES=cache
bench: $(STAMP)
	@set -e; for b in $(BENCHES); do echo "=== bench/$$b.py ==="; $(BIN)/python bench/$$b.py; done

down: $(STAMP)
	$(BIN)/metricsmith down

status: $(STAMP)
	$(BIN)/metricsmith status

clean:
	rm -rf target logs .pytest_cache .mypy_cache .ruff_cache
