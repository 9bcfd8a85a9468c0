"""The bottom layer: errors, YAML field readers, atomic file writes, devices and seeds, checkpoints, safe unpickling, distributed setup. Imports nothing else of tzkgraph."""
