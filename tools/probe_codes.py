"""How much label information a trained knowledge type's code carries.

For ``STAGE/KNOWLEDGE`` of a root (image) stage: the code posterior ``p(c | e=1, t)``'s
spread across examples (std of the means ``μ(t)``) against its own width (``σ``), their
ratio as a signal-to-noise figure, and the held-out accuracy of a linear classifier
(softmax regression) of the examples' labels, fitted on posterior means and, separately,
on single sampled codes — what a child stage observing that code gets to see.

    python tools/probe_codes.py graphs/mnist_digits.yaml images/mnist [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tzkgraph.data.dataset import load_graph_data
from tzkgraph.graph.rundir import load_trained
from tzkgraph.spec.load import load_spec


@torch.no_grad()
def _codes(model, spec, stage: str, k: str, split: str, n: int):
    data = load_graph_data(spec.data, split)
    keep = data.present(spec.stage(stage).get(k).present).nonzero().flatten()[:n]
    kn = model.stages[stage].knowledge[k]
    means, stds, samples = [], [], []
    for chunk in keep.split(512):
        mean, log_std = kn.encoder_posterior[1](data.observations(chunk, fixed=True))
        means.append(mean)
        stds.append(log_std.exp())
        samples.append(kn.code_flow.inverse(mean + log_std.exp() * torch.randn_like(mean)))
    return torch.cat(means), torch.cat(stds), torch.cat(samples), data.labels[keep]


def _linear_probe(x, y, x_test, y_test, steps: int = 500) -> float:
    centre, scale = x.mean(0), x.std(0).clamp(min=1e-8)
    weight = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    bias = torch.zeros(int(y.max()) + 1, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy((x - centre) / scale @ weight + bias, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((((x_test - centre) / scale @ weight + bias).argmax(1) == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph")
    parser.add_argument("knowledge", help="STAGE/KNOWLEDGE of a root stage, e.g. images/mnist")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-n", type=int, default=5000, help="examples per split (default: 5000)")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = load_spec(args.graph, args.overrides)
    stage, k = args.knowledge.split("/")
    if not spec.stage(stage).is_root:
        raise SystemExit(f"{args.knowledge}: probes only knowledge types of a root (image) stage")
    model, _ = load_trained(spec)
    mean, std, sample, y = _codes(model, spec, stage, k, "train", args.n)
    mean_t, std_t, sample_t, y_t = _codes(model, spec, stage, k, "test", args.n)
    spread = mean.std(0)  # per dimension, across examples
    print(json.dumps({
        "knowledge": args.knowledge, "examples": [len(y), len(y_t)],
        "posterior_std": float(std.mean()), "mean_spread": float(spread.mean()),
        "snr_per_dim": [round(float(v), 3) for v in (spread / std.mean(0)) ** 2],
        "linear_probe_accuracy_means": _linear_probe(mean, y, mean_t, y_t),
        "linear_probe_accuracy_samples": _linear_probe(sample, y, sample_t, y_t),
    }, indent=1))


if __name__ == "__main__":
    main()
