# The two commands of the README: `make demo` (main job on the embedded default) and `make test`.
# --no-compile: byte-compiling all of torch at install costs ~1 min; modules compile when first imported.
PYTHON_BIN ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,app,notebooks
PYPROJECT_SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(PYPROJECT_SUM)-$(EXTRAS)
CORE_STAMP := $(VENV)/.core-$(PYPROJECT_SUM)

.PHONY: install install-core demo test test-all clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --no-compile -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

# the demo needs only the core package; a venv that already has the extras is used as it is
$(CORE_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --no-compile -q -e .
	@rm -f $(VENV)/.core-*
	@touch $(CORE_STAMP)

install-core: $(CORE_STAMP)

demo:
	@test -f $(STAMP) || $(MAKE) --no-print-directory install-core
	$(PY) -m workbench demo

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
