"""Launching probe Jobs: their specs, the launcher, waiting, and judging what the pods logged."""
