# `make demo` and `make test` each set up everything they need on a fresh machine:
# a virtual environment in .venv and the Debian package dataset-fashion-mnist.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-kernels test-floor check-python timm-tests docs venv data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,torchcodec,tensorflow,jax]'
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

# The tests whose results depend on the CPU's kernels (marked numerics: parity, fidelity, fast
# path, resume equality) again, under another kernel set than this CPU's own: AVX2 on an AVX-512
# machine, the portable default elsewhere. A test that holds on one CPU only then fails here.
KERNELS ?= $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" || echo "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41")
test-kernels: venv data
	env $(KERNELS) $(PY) -m pytest -q -m numerics

# The suite again in a second environment at the oldest versions we support, pinned exactly in
# $(FLOOR) (torch 2.6 with torchvision 0.21, timm 1.0.15, Pillow 9.3, NumPy 1.24, ...), without the
# slow model-zoo checks. uv builds it from its cache (~/.cache/uv): PyPI has only CUDA builds of
# older torch releases, about 3 GB to download the first time, seconds after that.
# The pins have wheels for Python 3.10 and 3.11 only (NumPy 1.24 has none for 3.12).
FLOOR_VENV := .venv-floor
FLOOR := .ci/floor-constraints.txt
FLOOR_PYTHON ?= 3.11
$(FLOOR_VENV)/.installed: pyproject.toml $(FLOOR) | venv
	rm -rf $(FLOOR_VENV)
	$(VENV)/bin/uv venv --quiet --python $(FLOOR_PYTHON) $(FLOOR_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(FLOOR_VENV) --constraint $(FLOOR) -e '.[dev]'
	@touch $@
test-floor: $(FLOOR_VENV)/.installed data
	$(FLOOR_VENV)/bin/python .ci/versions.py $(FLOOR)
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow"

# Nothing in the code needs a newer Python than the oldest that pyproject.toml declares (3.10):
# these machines have 3.11 only, so vermin checks it statically.
check-python: venv
	$(VENV)/bin/vermin --target=3.10- --violations --eval-annotations --no-tips --quiet src tests benchmarks

# timm's own generic model tests (tests/test_models.py of the installed timm's source distribution,
# fetched now, never committed), run against every name scalenet registers. Needs the package index.
TIMM_TESTS := .timm-tests
timm-tests: venv
	@rm -rf $(TIMM_TESTS) && mkdir -p $(TIMM_TESTS)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
		"timm==$$($(PY) -c 'import timm; print(timm.__version__)')" -d $(TIMM_TESTS)
	tar xzf $(TIMM_TESTS)/timm-*.tar.gz -C $(TIMM_TESTS)
	@# register the ScaleNets before collection, and name their module among the forward_intermediates models
	cd $(TIMM_TESTS)/timm-*/tests && echo "import scalenet  # noqa: F401" >> conftest.py && \
		sed -i "s/^FEAT_INTER_FILTERS = \[/FEAT_INTER_FILTERS = ['scalenet', /" test_models.py && \
		$(abspath $(PY)) -m pytest test_models.py -k scalenet -q -p no:cacheprovider

# The documentation site from docs/ into site/ (MkDocs, mkdocstrings). --strict: a broken link,
# a missing anchor or an unresolved API reference fails the build. The command-line reference is
# generated from the parser at build time (tools/mkdocs_hooks.py).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml | venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	@touch $@
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The whole pipeline on Fashion-MNIST (about 15 minutes on 2 CPU cores): report in runs/demo/report.md
demo: venv data
	$(VENV)/bin/scalenet demo --profile quick --out runs/demo

clean:
	rm -rf $(VENV) $(FLOOR_VENV) src/*.egg-info .pytest_cache $(TIMM_TESTS)
