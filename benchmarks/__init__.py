"""Benchmarks: each prints its numbers and ratios against a baseline run side by side."""
