"""neft: Neuron-Level Fine-Tuning (NeFT) for language models, as a library and a reproducible pipeline.

NeFT in your own training code is `neft.adapter` (README.md, "The library"): `NeftConfig`,
`get_neft_model` and `NeftModel`, with `neft.neurons.score_neurons` and `neft.masks.build_mask` to
make a mask. This package imports nothing heavy itself, so the pipeline's light stages stay light.
"""

import os

# What the pipeline, its tests and benchmarks run under: hub clients and DVC stay off the network.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def use_offline_environment() -> None:
    """Set OFFLINE_ENVIRONMENT in os.environ before any hub client loads; a variable already set wins."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
