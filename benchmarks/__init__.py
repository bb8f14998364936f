"""Benchmarks of the provider; each prints its figures and asserts nothing."""
