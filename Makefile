# The two commands of the README: `make demo` (main job on the embedded default) and `make test`.
PYTHON_BIN ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,app,notebooks
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(EXTRAS)

.PHONY: install demo test test-all clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m workbench demo

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
