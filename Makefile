# Two commands matter (see README.md):
#   make pipeline   set up everything, then `dvc repro` the embedded default (SmolLM2 + Bible, CPU)
#   make test       set up everything, lint (ruff, configured in pyproject.toml), then run the test suite
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup pipeline lint test
setup:
	bash setup.sh

pipeline: setup
	dvc repro

lint: setup
	ruff check .

test: lint
	python -m pytest -q
