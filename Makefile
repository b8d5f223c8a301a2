# sipha: `make demo` and `make test` work as root on a fresh Debian with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Debian packages the tests and benchmarks drive as real peers (binary:package).
TEST_DEBS  := sipp:sip-tester openssl:openssl kamailio:kamailio redis-server:redis-server chromium:chromium baresip:baresip-core
BENCH_DEBS := $(TEST_DEBS)

# the hot modules mypyc compiles ([tool.sipha] compiled in pyproject.toml)
COMPILED = $(shell $(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['sipha']['compiled']))")
# the unit tests of those modules, run a second time on the pure-Python files
PURE_TESTS = tests/test_core.py tests/test_transaction.py tests/test_message.py \
  tests/test_rfc4475.py tests/test_fuzz.py tests/test_uri.py tests/test_address.py \
  tests/test_dialog_table.py \
  tests/test_stack.py tests/test_edge_protection.py tests/edge/test_relay.py \
  tests/edge/test_robustness.py tests/edge/test_proxy_rules.py \
  tests/edge/test_route_signature.py tests/test_tcp_limits.py tests/edge/test_flows.py \
  tests/edge/test_dialog_keepalive.py

.PHONY: demo test lint bench deps debs clean compile

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

# mypyc, when there is a C compiler: optional, the pure-Python modules are the fallback
compile: $(STAMP)
	@if command -v cc >/dev/null 2>&1; then \
	  echo "compiling with mypyc: $(COMPILED)"; \
	  cd src && ../$(VENV)/bin/mypyc $(COMPILED) >../build-mypyc.log 2>&1 \
	    && touch sipha/*.so sipha/*/*.so \
	    && echo "compiled ($$(ls sipha/*.so sipha/*/*.so | wc -l) modules)" \
	    || { echo "mypyc failed (see build-mypyc.log): running pure Python"; \
	         find . -name '*.so' -delete; }; \
	else echo "no C compiler: running pure Python"; fi

test: $(STAMP) deps lint compile
	$(PY) -m pytest -q -p no:cacheprovider
	@if ls src/sipha/sip/*.so >/dev/null 2>&1; then \
	  echo "the compiled modules' unit tests again, on the pure-Python files:"; \
	  SIPHA_PURE=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_TESTS); fi

bench: $(STAMP) compile
	@$(MAKE) --no-print-directory debs DEBS="$(BENCH_DEBS)"
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/parse.py
	$(PY) bench/transactions.py
	$(PY) bench/cps.py
	$(PY) bench/failover.py --svg docs/failover-chart.svg

clean:
	rm -rf $(VENV) build src/build src/*.egg-info .mypy_cache .ruff_cache build-mypyc.log
	find src -name '*.so' -delete
