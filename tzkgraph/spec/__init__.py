"""The YAML: typed specs, present rules, overrides, loading and validation. Imports only tzkgraph.core."""
