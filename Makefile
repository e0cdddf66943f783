# hybridgate: `make run` serves the gateway with the embedded defaults; `make test` runs the whole suite.
PY      ?= python3
VENV    ?= .venv
PORT    ?= 8080
HOST    ?= 127.0.0.1
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs on one pytest-xdist worker per core, whole files per worker (module fixtures stay shared);
# `make test XDIST=` runs it in one process.
XDIST   ?= -n auto --dist loadfile

.PHONY: install run demo test services browser lint bench-gateway clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/hybridgate migrate
	$(BIN)/hybridgate serve --host $(HOST) --port $(PORT)

# The admin console with data in it: a gateway routing to four fake providers, and a mixed workload with
# feedback sent through it (open http://$(HOST):$(PORT)/admin; Ctrl-C stops both).
demo: install
	$(BIN)/hybridgate demo-traffic --write-config var/demo.yaml --database-url sqlite+aiosqlite:///./var/demo.db
	HYBRIDGATE_CONFIG=var/demo.yaml $(BIN)/hybridgate migrate
	HYBRIDGATE_CONFIG=var/demo.yaml $(BIN)/hybridgate serve --host $(HOST) --port $(PORT) & GW=$$!; \
		$(BIN)/hybridgate demo-traffic --gateway http://$(HOST):$(PORT); kill $$GW

# Postgres and Redis are real dependencies of the tests: start them if they are down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@# `docker compose config` validates docker-compose.yml in the tests (no engine needed); best effort.
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || \
		(timeout 300 sh -c 'apt-get update -qq && apt-get install -y -qq docker-compose' >/dev/null 2>&1 || true)

# The admin console's browser tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

lint: install
	$(BIN)/ruff check .

test: install services browser lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

bench-gateway: install
	$(BIN)/python bench/gateway_overhead.py

clean:
	rm -rf $(VENV) var hybridgate.db
