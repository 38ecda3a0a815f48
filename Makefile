# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TORCH_SPEC := torch==2.13.0

.PHONY: quickstart test lint ruff system-deps image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned, so the range in pyproject.toml never pulls a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	# --no-deps: the PyTorch-to-LiteRT converter (xdsl 0.28 pins typing-extensions<4.13, which
	# pydantic refuses; its other dependencies are in the tflite extra), and torchattacks, test-only
	# against our PGD (its dependencies would pull torchvision).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps 'litert-torch==0.10.0' \
		'litert-converter==0.5.0' 'xdsl==0.28.0' 'ai-edge-quantizer==0.10.0' \
		'litert-lm-builder==0.18.1' 'torchattacks==3.5.1'
	touch $@

system-deps:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; fi
	@if ! command -v promtool >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus; fi
	@if [ ! -x /usr/bin/chromium ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; fi
	@if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q haproxy; fi
	@if [ ! -x /usr/bin/prometheus-alertmanager ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus-alertmanager; fi
	@if ! command -v mmdebstrap >/dev/null 2>&1 || ! command -v buildah >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mmdebstrap buildah; fi

# The container images, without a daemon (scripts/build_image.py): IMAGE=serve (the
# torch-free serving runtime, the default) or IMAGE=full (with PyTorch), to dist/.
IMAGE ?= serve
image: $(VENV)/.installed system-deps
	$(BIN)/python scripts/build_image.py $(IMAGE)

# The main job (scripts/quickstart.py): train the fast Fashion-MNIST recipe (about 3 minutes on
# 2 CPU cores; FULL=1 for this machine's 10-minute recipe: 95.3% with native bf16, 95.1% in
# float32), evaluate it, register it as production, export ONNX and int8 (registered too),
# then serve it in the foreground (SERVE=0: one smoke request, then stop). Re-running reuses
# what exists. PORT=8000 by default.
quickstart: $(VENV)/.installed system-deps
	$(BIN)/python scripts/quickstart.py

lint: ruff
	$(BIN)/mypy

ruff: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

# mypy (half a minute from a clean clone, on one core) runs beside the tests at the lowest
# priority, on the time they leave a core idle; its verdict follows theirs and fails the target
# as they do. Our sources are compiled first: the tests start many resnetkit processes, and
# each would compile them again where PYTHONDONTWRITEBYTECODE is set.
test: $(VENV)/.installed system-deps ruff
	$(BIN)/python -m compileall -q -j 0 src > /dev/null
	@mkdir -p .mypy_cache; nice -n 19 $(BIN)/mypy > .mypy_cache/make-test.log 2>&1 & mypy=$$!; \
	$(BIN)/pytest; rc=$$?; \
	wait $$mypy || rc=1; echo "mypy: $$(cat .mypy_cache/make-test.log)"; exit $$rc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
