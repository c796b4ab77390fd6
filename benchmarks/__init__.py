"""Benchmarks: each prints a table and writes JSON; no timing asserts."""
