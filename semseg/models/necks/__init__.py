"""Necks: multi-level backbone features -> multi-level features for the decode heads (one neck per file)."""
