"""neft: Neuron-Level Fine-Tuning (NeFT) for language models, as a library and a reproducible pipeline.

The API for using NeFT in your own training code is listed in README.md ("Using NeFT in your own
code"): `neft.neurons.score_neurons`, `neft.masks.build_mask`, `neft.delta.attach_deltas`,
`save_delta`, `load_delta` and `apply_delta`.
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
