# sinkhole: `make serve` runs the server on its embedded defaults, `make test` runs the tests.
# Both create the virtual environment they need (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[web,test]'
	touch $(STAMP)

# Embedded defaults: UDP+TCP on 127.0.0.1:1053, upstreams from /etc/resolv.conf,
# the shipped catalog blocked, hits in ./sinkhole.db. Try: dig @127.0.0.1 -p 1053 chatgpt.com
serve: $(STAMP)
	$(BIN)/sinkhole serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check resolver tests bench
	$(BIN)/ruff format --check resolver tests bench

format: $(STAMP)
	$(BIN)/ruff format resolver tests bench
	$(BIN)/ruff check --fix resolver tests bench

# Needs: apt-get install -y dnsperf nsd dnsmasq unbound (see bench/README.md).
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
