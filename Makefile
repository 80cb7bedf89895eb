# Set-up and entry points. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch and torchvision come from this machine's local wheels; install them
# first and pinned so no later resolver step picks another (multi-GB) build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_LOGGING_EXTRA_LOGGERS ?= pld_pipeline,storage

.PHONY: test test-fast demo demo-quick bench lint install clean-venv fashion-mnist system-deps docs docs-serve

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e ".[dev,s3,timm,docs]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

# Two test processes by default (TEST_WORKERS=0 runs one): most integration tests wait on
# servers and subprocesses. Each file stays on one process (its module fixtures start once).
TEST_WORKERS ?= 2

test: $(STAMP) system-deps docs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

# The inner loop: no servers, no subprocesses, no pretrained networks.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not integration and not slow"

# The main job: Fashion-MNIST -> teacher -> cache -> sweep of students, on CPU.
demo: $(STAMP) fashion-mnist
	$(VENV)/bin/pld demo $(DEMO_ARGS)

demo-quick: $(STAMP) fashion-mnist
	$(VENV)/bin/pld demo --quick $(DEMO_ARGS)

# Debian packages: the real Fashion-MNIST (demo) and Chromium (the UI test); each is
# installed only when missing, so a set-up machine installs nothing.
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

fashion-mnist:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || ($(APT_INSTALL) dataset-fashion-mnist)

system-deps: fashion-mnist
	@command -v chromium >/dev/null 2>&1 || ($(APT_INSTALL) chromium)

bench: $(STAMP)
	$(PY) bench/losses.py
	$(PY) bench/storage.py
	$(PY) bench/teacher.py
	$(PY) bench/student.py

# The docs site (mkdocs.yml, docs/) into site/: offline (no fonts or scripts fetched) and
# --strict, so a broken link or anchor, a page missing from the nav, a missing included
# file or a docstring that no longer resolves fails the build. `make test` runs it.
export NO_MKDOCS_2_WARNING ?= 1

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

lint: $(STAMP)
	$(VENV)/bin/ruff check pld_pipeline storage flows tests bench
	$(VENV)/bin/ruff format --check pld_pipeline storage flows tests bench

clean-venv:
	rm -rf $(VENV)
