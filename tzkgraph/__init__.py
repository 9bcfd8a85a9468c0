"""tzkgraph: compose TzK flow-based conditional generative models into DAGs."""

__version__ = "0.1.0"
