"""lmstream: train decoder-only transformer language models on streamed text."""

__version__ = "0.1.0"
