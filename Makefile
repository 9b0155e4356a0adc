# Copeau — two commands on a fresh Debian or Ubuntu machine:
#   make demo   set everything up, then run a simulated workshop (Ctrl-C or DEMO_SECONDS=N to stop)
#   make test   set everything up, then run the test suite against real mosquitto and influxd
# And for speed (never part of `make test`): make bench   (see BENCHMARKS.md and bench/README.md)
# Running either again is fast: the set-up only redoes what is missing or out of date.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.copeau-installed

.PHONY: setup system-deps demo test test-unit test-integration bench lint clean

setup: system-deps $(STAMP)

system-deps:
	@scripts/setup-system.sh

# Re-installed only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installation des dépendances Python dans $(VENV)…"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@# grafana-client depends on urllib3-future, whose wheel overwrites urllib3; built from source with this
	@# variable it installs beside it instead (see pyproject.toml).
	@URLLIB3_NO_OVERRIDE=1 PIP_NO_BINARY=urllib3-future \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(BIN)/python -c 'import urllib3, sys; sys.exit(0 if urllib3.__version__.split(".")[0] == "2" and int(urllib3.__version__.split(".")[1]) < 20 else "urllib3 was replaced by urllib3-future: see pyproject.toml")'
	@touch $(STAMP)

demo: setup
	$(BIN)/copeau demo

test: setup
	$(BIN)/pytest -m "not integration"
	$(BIN)/pytest -m integration

# The benchmark suite against real mosquitto and influxd: prints a table, writes bench/results/*.json (< 15 min).
bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis .mypy_cache .ruff_cache
