"""Bisection over a framework's commit history (commit ranges, the search, the verdict cache)."""
