# sipha: `make demo` and `make test` work as root on a fresh Debian with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Debian packages the tests drive as real peers (binary:package).
TEST_DEBS := sipp:sip-tester

.PHONY: demo test lint unit bench deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

deps:
	@missing=""; for pair in $(TEST_DEBS); do \
	  bin=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: $(STAMP)
	$(VENV)/bin/sipha demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: $(STAMP) deps lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP) deps
	$(PY) -m pip install -q -e '.[bench]' || true
	$(PY) bench/parse.py
	$(PY) bench/transactions.py

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache
