"""Ekka: finds silent errors in LLM serving frameworks (which commit, which component)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
