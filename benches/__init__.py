"""Benchmarks of haven's hot paths against their physical baselines.

Run ``python -m benches`` from the repository root (``make bench``). Each
benchmark measures one path of the real code against PostgreSQL, Redis and
anvil, measures the cheapest thing that does the same physical work in the
same run on the same machine, and reports the ratio: absolute numbers on a
shared machine mean little, ratios travel.
"""
