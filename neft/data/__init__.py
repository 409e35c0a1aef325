"""Task data: loaders per source, one record format, deterministic splits."""
