# Two commands matter (see README.md):
#   make pipeline   set up everything, then `dvc repro` the embedded default (SmolLM2 + Bible, CPU)
#   make test       set up everything, then run the test suite
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup pipeline test
setup:
	bash setup.sh

pipeline: setup
	dvc repro

test: setup
	python -m pytest -q
