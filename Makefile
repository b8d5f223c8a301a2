# sipha: `make demo` and `make test` work as root on a fresh Debian with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Debian packages the tests and benchmarks drive as real peers (binary:package).
TEST_DEBS  := sipp:sip-tester openssl:openssl kamailio:kamailio redis-server:redis-server chromium:chromium
BENCH_DEBS := $(TEST_DEBS)

.PHONY: demo test lint bench deps debs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Install the Debian packages in DEBS whose binary is missing (one apt-get update first).
debs:
	@missing=""; for pair in $(DEBS); do \
	  bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

deps:
	@$(MAKE) --no-print-directory debs DEBS="$(TEST_DEBS)"

demo: $(STAMP)
	$(VENV)/bin/sipha demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

test: $(STAMP) deps lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	@$(MAKE) --no-print-directory debs DEBS="$(BENCH_DEBS)"
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/parse.py
	$(PY) bench/transactions.py
	$(PY) bench/edge.py
	$(PY) bench/failover.py --svg docs/failover-chart.svg

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache
