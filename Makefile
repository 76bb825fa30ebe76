# `make demo` and `make test` each set up everything they need on a fresh machine:
# a virtual environment in .venv and the Debian package dataset-fashion-mnist.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Fashion-MNIST from Debian (IDX files in $(FASHION_MNIST)). Without apt-get or root, the
# library falls back to a torchvision download where the machine is online.
data:
	@if [ -d $(FASHION_MNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "note: cannot install dataset-fashion-mnist here (no apt-get/root)"; \
	fi

test: venv data
	$(PY) -m pytest -q

# The whole pipeline on Fashion-MNIST (about 15 minutes on 2 CPU cores): report in runs/demo/report.md
demo: venv data
	$(VENV)/bin/scalenet demo --profile quick --out runs/demo

clean:
	rm -rf $(VENV) src/*.egg-info .pytest_cache
