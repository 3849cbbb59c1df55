"""CF recall: implicit-feedback ALS (through ``implicit``) over integer user and item rows."""

from ltray.cf.als import ALSRecall

__all__ = ["ALSRecall"]
