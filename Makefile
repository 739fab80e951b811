# AIOps suite. `make run` and `make test` are all a newcomer needs; both set up the
# virtual environment, install the package and generate the protobuf code first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
BUF    := .tools/node_modules/.bin/buf

export PYTHONPATH := $(CURDIR):$(CURDIR)/gen

.PHONY: install protos lint fmt test run run-feedback run-telemetry run-anomaly \
        run-remediation run-gateway bench chaos demo clean buf-lint

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,local,s3,otlp]'
	touch $(STAMP)

protos: $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTO_SRC)
	rm -rf gen && mkdir -p gen
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=gen --grpc_python_out=gen \
	  --mypy_out=gen --mypy_grpc_out=gen \
	  $(PROTO_SRC)
	find gen -mindepth 1 -type d -exec touch {}/__init__.py \;
	touch $(GEN_STAMP)

# buf ships inside the npm package @bufbuild/buf; it is only needed to lint the contracts.
$(BUF):
	mkdir -p .tools && npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

buf-lint: $(BUF)
	cd protos && ../$(BUF) lint

lint: protos
	$(VENV)/bin/ruff format --check services gateway tests
	$(VENV)/bin/ruff check services gateway tests
	$(VENV)/bin/mypy
	@if command -v npm >/dev/null; then $(MAKE) buf-lint; else echo "npm not found: skipping buf lint"; fi

fmt: $(STAMP)
	$(VENV)/bin/ruff format services gateway tests
	$(VENV)/bin/ruff check --fix services gateway tests

test: protos
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory buf-lint; fi
	$(PY) -m pytest $(PYTEST_ARGS)

run: protos
	$(VENV)/bin/aiops run

run-feedback: protos
	$(PY) -m services.feedback
run-telemetry: protos
	$(PY) -m services.telemetry
run-anomaly: protos
	$(PY) -m services.anomaly
run-remediation: protos
	$(PY) -m services.remediation
run-gateway: protos
	$(PY) -m gateway

# Benchmarks drive the gateway with wrk (Debian package `wrk`); they start the suite
# themselves on free loopback ports and print tables plus artifacts/bench.json.
bench: protos
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install wrk"; exit 2; }
	$(PY) -m bench

# The suite plus a traffic generator injecting an incident every 3 minutes (the first after
# 20 s); open http://localhost:3000/aiops and choose "Dev sign-in as operator".
demo: protos
	$(PY) -m services.demo

# Fault scenarios (kill -9 Redis under load, ...): bounded, loopback only.
chaos: protos
	$(PY) -m chaos

clean:
	rm -rf gen .pytest_cache .mypy_cache .ruff_cache
