# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
# Azurite (the Azure Blob emulator the tests run) is an npm package, installed locally into .tools/.
TOOLS := .tools
AZURITE_VERSION := 3.37.0
AZURITE_STAMP := $(TOOLS)/.installed-azurite-$(AZURITE_VERSION)

.PHONY: demo test lint bench clean azurite wrk chromium test-integrations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(TEST_STAMP): pyproject.toml examples/custom_sink_plugin/pyproject.toml plugins/obsml-azure-monitor/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]' -e examples/custom_sink_plugin -e plugins/obsml-azure-monitor
	touch $@ $(DEMO_STAMP)

# npm is installed with apt-get (Debian/Ubuntu) when the machine has none; sudo only when not root.
$(AZURITE_STAMP):
	@command -v npm >/dev/null 2>&1 || { \
		echo "npm not found: installing nodejs and npm with apt-get"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --silent --no-audit --no-fund --no-update-notifier azurite@$(AZURITE_VERSION)
	$(TOOLS)/node_modules/.bin/azurite-blob --version
	touch $@

azurite: $(AZURITE_STAMP)

# wrk, the load generator of benchmarks/server_load.py, from Debian's packages; sudo only when not root.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "wrk not found: installing it with apt-get"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# Headless Chromium, which opens obsml report's HTML in tests/test_report.py, from Debian's packages.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "chromium not found: installing it with apt-get"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(DEMO_STAMP)
	$(BIN)/obsml demo

# The Flask example under gunicorn with two workers (ObsmlWSGIMiddleware).
.PHONY: demo-wsgi
demo-wsgi: $(DEMO_STAMP)
	$(BIN)/obsml demo --wsgi

# pytest exits 5 when it collected nothing: say so loudly rather than fail on it.
# chromium: tests/test_report.py opens a report in it.
# wrk too: tests/test_benchmarks.py runs `benchmarks/bench.py --quick` (make bench is never part of make test).
test: $(TEST_STAMP) $(AZURITE_STAMP) wrk chromium
	$(BIN)/python -m ruff check obsml examples benchmarks tests plugins
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --strict plugins/obsml-azure-monitor/obsml_azure_monitor
	$(BIN)/python -m pytest examples/custom_sink_plugin/tests
	$(BIN)/python -m pytest plugins/obsml-azure-monitor/tests
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# Each model server's integration test in a virtual environment of its own (they pin conflicting
# versions): .venv-integrations/<name>, with obsml from this checkout and
# tests/integrations/requirements-<name>.txt. A stamp named after the hash of those requirements (and
# of pyproject.toml) keeps the environment until they change: a second run installs nothing.
INTEGRATIONS := azureml mlflow kserve bentoml
INTEGRATIONS_VENVS := .venv-integrations

test-integrations:
	@set -e; for name in $(INTEGRATIONS); do \
		venv=$(INTEGRATIONS_VENVS)/$$name; \
		key=$$(cat tests/integrations/requirements-$$name.txt pyproject.toml | sha256sum | cut -c1-16); \
		if [ ! -f $$venv/.installed-$$key ]; then \
			echo "installing $$venv"; rm -rf $$venv; $(PYTHON) -m venv $$venv; \
			$$venv/bin/python -m pip install --quiet -e . -r tests/integrations/requirements-$$name.txt; \
			touch $$venv/.installed-$$key; \
		fi; \
	done
	@rc=0; for name in $(INTEGRATIONS); do \
		$(INTEGRATIONS_VENVS)/$$name/bin/python -m pytest -p no:cacheprovider --confcutdir=tests/integrations \
			tests/integrations/test_$$name.py || rc=1; \
	done; exit $$rc

# Every benchmark, about 10 minutes: benchmarks/results/<date>-<host>.{json,md,png} (benchmarks/README.md).
# The test extra includes the bench extra (httptools, matplotlib, sentry-sdk, logfire).
bench: $(TEST_STAMP) wrk
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .venv-integrations obsml-data .pytest_cache .mypy_cache .ruff_cache
