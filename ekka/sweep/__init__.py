"""Sweeps (`ekka sweep`): the nightly regression sweep of a branch (`nightly`) and the sweep
over architectures against transformers (`architectures`)."""
