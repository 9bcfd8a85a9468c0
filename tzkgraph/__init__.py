"""tzkgraph: compose TzK flow-based conditional generative models into DAGs.

The library API (imported on first use, so the command line starts fast)::

    from tzkgraph import TzKStage, Glow, VectorFlow          # models
    from tzkgraph import load_spec, run, evaluate, sample    # graphs: load, train, evaluate, sample a path
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "TzKStage": "tzkgraph.model.stage",
    "Glow": "tzkgraph.model.flows",
    "VectorFlow": "tzkgraph.model.flows",
    "load_spec": "tzkgraph.spec.load",
    "run": "tzkgraph.training.train",
    "evaluate": "tzkgraph.use.evaluate:evaluate_run",
    "sample": "tzkgraph.use.sampling:sample_path",
    "load_trained": "tzkgraph.graph.rundir",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'tzkgraph' has no attribute {name!r}")
    module, _, attribute = _API[name].partition(":")
    return getattr(import_module(module), attribute or name)
