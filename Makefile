# `make demo`: run the main job on the built-in default. `make test`: install and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test,conformance]" $(TORCH_PIN)
	$(PY) -m pip install -q --no-deps cityscapesScripts==2.3.0
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/semseg demo --work-dir work_dirs/demo

test: $(VENV)/.test
	$(VENV)/bin/ruff check .
	SEMSEG_REQUIRE_ORACLE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) work_dirs
