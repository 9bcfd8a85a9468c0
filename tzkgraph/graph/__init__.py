"""A graph of stages: the model, a phase's plan, the executor of its summed objective, and the HDF5 cache of frozen parts."""
