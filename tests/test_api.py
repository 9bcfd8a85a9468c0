"""The library API: what `import tzkgraph` offers, and flows as density models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tzkgraph
from tzkgraph.model.density import gaussian_log_prob


def test_the_api_names_resolve_to_the_package_objects():
    from tzkgraph.model.stage import TzKStage
    from tzkgraph.use.evaluate import evaluate_run

    assert tzkgraph.TzKStage is TzKStage and tzkgraph.evaluate is evaluate_run
    for name in tzkgraph.__all__:
        assert callable(getattr(tzkgraph, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tzkgraph.nothing


@pytest.mark.parametrize("flow", [tzkgraph.Glow((1, 8, 8), levels=2, steps=1, hidden=8),
                                  tzkgraph.VectorFlow(3, steps=2, hidden=8)], ids=["glow", "vector"])
def test_a_flow_is_a_density_model(flow):
    torch.manual_seed(0)
    flow(flow.inverse(torch.randn(64, flow.dim)))  # ActNorms' data-dependent initialisation
    x = flow.sample(5, temperature=0.5)
    z, logdet = flow(x)
    assert torch.allclose(flow.log_prob(x), gaussian_log_prob(z) + logdet)
    assert torch.allclose(z.flatten(1).std(), torch.tensor(0.5), atol=0.25)  # drawn at temperature 0.5


def test_the_readme_library_example_runs():
    # the README's first library example, as written (our own file, not user input)
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("tzkgraph is also a library.")
    block = text[text.index("```python\n", start) + len("```python\n"):]
    block = block[:block.index("```")]
    names: dict = {}
    exec(compile(block, "README.md (library example)", "exec"), names)
    assert names["images"].shape == (16, 1, 32, 32) and names["codes"].shape == (8, 10)
    assert torch.isfinite(names["loss"]) and torch.isfinite(names["out"].loss)
