# Two commands on a fresh machine:  `make demo` (install + start the app)  and  `make test`.
# `make test-fast`: lint and the tests not marked slow or browser (a quick loop while editing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -c "import open_clip, torchvision, gradio, pydicom, captum, umap"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) app.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow and not browser"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
