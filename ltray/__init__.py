"""ltray: long-tail recommendation with language models, on Ray."""

__version__ = "0.1.0"
