"""Test bits/dim of a trained graph's image prior p(t) over a whole split, overall and per source.

``tzkgraph eval`` scores every knowledge type on a sample of examples; this scores only the
image stage's t-flow, on every image of the split (20,000 for MNIST + Fashion-MNIST), which is
the figure a flow's pretraining is judged by (docs/flow.md).

    python tools/prior_bpd.py graphs/mnist_digits.yaml --set name=pre_cd_s0 [--stage images] [--split test]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from tqdm import tqdm

from tzkgraph.data.dataset import load_graph_data
from tzkgraph.graph.rundir import load_trained
from tzkgraph.model.density import bits_per_dim
from tzkgraph.spec.load import load_spec


@torch.no_grad()
def prior_bits_per_dim(graph: str, overrides: list[str], stage: str = "images", split: str = "test",
                       batch: int = 500) -> dict[str, float]:
    """``{"all": bits/dim, SOURCE: bits/dim, ...}`` of ``stage``'s t-flow on every image of ``split``."""
    spec = load_spec(graph, overrides)
    model, _ = load_trained(spec)
    data = load_graph_data(spec.data, split)
    flow = model.stages[stage].t_flow.eval()
    shape = spec.t_shape(stage)  # counted as eval counts them
    if len(shape) != 3:
        raise SystemExit(f"--stage {stage}: observes codes, not images; this scores an image stage's prior")
    dims, bits = math.prod(shape), spec.data.image.bits
    nll = torch.cat([-flow.log_prob(data.observations(torch.arange(i, min(i + batch, len(data))), fixed=True))
                     for i in tqdm(range(0, len(data), batch), desc=f"{spec.name} p(t)", leave=False)])
    out = {"all": float(bits_per_dim(nll.mean().item(), dims, bits))}
    for s, name in enumerate(spec.data.source_names):
        rows = data.source_index == s
        out[name] = float(bits_per_dim(nll[rows].mean().item(), dims, bits))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("graph")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stage", default="images")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(json.dumps(prior_bits_per_dim(args.graph, args.overrides, args.stage, args.split)))


if __name__ == "__main__":
    main()
