# sinkhole: `make serve` runs the server on its embedded defaults, `make test` runs the tests.
# Both create the virtual environment they need (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py resolver/_batchio.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[web,test]'
	touch $(STAMP)

# Embedded defaults: UDP+TCP on 127.0.0.1:1053, upstreams from /etc/resolv.conf,
# the shipped catalog blocked, hits in ./sinkhole.db. Try: dig @127.0.0.1 -p 1053 chatgpt.com
serve: $(STAMP)
	$(BIN)/sinkhole serve

# The whole suite with the C speedups (resolver/_batchio.c, built by `make install` when
# gcc and the Python headers are there), then the network-facing files again on the
# pure-Python datagram loop, so both paths meet the fuzz corpus and the hostile input.
NETWORK_TESTS := tests/test_hostile.py tests/test_wire.py tests/test_server.py \
	tests/test_protocol.py tests/test_chain.py tests/test_batchio.py tests/test_upstream.py

test: $(STAMP)
	$(BIN)/python -m pytest -q
	SINKHOLE_NO_SPEEDUPS=1 $(BIN)/python -m pytest -q $(NETWORK_TESTS)

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
