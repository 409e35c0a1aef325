"""neft: Neuron-Level Fine-Tuning (NeFT) for language models, as a reproducible pipeline."""
