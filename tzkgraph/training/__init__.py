"""Training a graph: phases, checkpoints, resuming, signals, the run's status."""
