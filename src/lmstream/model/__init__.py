"""The decoder-only transformer: layers (layers.py), the model (transformer.py), sizes by name (presets.py)."""
