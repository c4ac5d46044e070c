"""Decode heads: multi-level backbone features -> per-pixel class logits (one head per file)."""
