"""Using a trained graph: evaluation, sampling down a path, the knowledge graph's picture."""
