"""Datasets: the registry of sources, offline fetching, and a graph's observations. Imports tzkgraph.spec and tzkgraph.core."""
