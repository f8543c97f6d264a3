# agi-xmpp: `make run` starts the service, `make test` runs every test. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= etc/quickstart.conf
PYTEST_ARGS ?=

.PHONY: all run test test-unit test-integration test-e2e bench soak sounds system-deps databases lab clean

all: test

system-deps:
	@tools/install-system-deps.sh

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,postgresql,mariadb]'
	touch $(STAMP)

databases:
	@tools/ensure-databases.sh

lab: system-deps
	tests/e2e/build_lab.sh

# The demo: a private Prosody and its account file (tools/demo.py), then the service. Ctrl-C stops it.
run: system-deps $(STAMP)
	$(BIN)/python -m tools.demo prepare $(CONFIG)
	$(BIN)/agi-xmpp --config $(CONFIG) serve

test: system-deps $(STAMP) databases lab
	@tools/install-system-deps.sh --browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/integration --ignore=tests/e2e $(PYTEST_ARGS)

test-integration: system-deps $(STAMP)
	@tools/install-system-deps.sh --browser
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: system-deps $(STAMP) lab
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

bench: system-deps $(STAMP) lab
	@tools/install-system-deps.sh --bench
	$(BIN)/python -m bench

# Issue 9's soak on Debian's stock Prosody and ejabberd (docs/reliability.md); the table also goes to
# bench/results/soak.json for make bench. SOAK_ARGS="--runs 5 --kills 1" (or "--until 20:30") for a short one.
SOAK_ARGS ?=
soak: system-deps $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

sounds:
	@tools/install-system-deps.sh --sounds
	sounds/make-sounds.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache state
