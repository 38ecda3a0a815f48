# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TORCH_SPEC := torch==2.13.0

.PHONY: quickstart test lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned, so the range in pyproject.toml never pulls a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

system-deps:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; fi

# The main job: train the fast Fashion-MNIST recipe (about 3 minutes on 2 CPU cores), evaluate
# it on the test set, register it and point the `production` alias at it.
QUICKSTART_RUN ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

quickstart: $(VENV)/.installed system-deps
	$(BIN)/resnetkit train --config configs/fashion_mnist_fast.toml --out $(QUICKSTART_RUN)
	$(BIN)/resnetkit registry register $(QUICKSTART_RUN) --name fashion-mnist \
		--alias production --reason "make quickstart"
	$(BIN)/resnetkit registry show fashion-mnist@production

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

test: $(VENV)/.installed system-deps lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
