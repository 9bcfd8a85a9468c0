"""Benchmark three ways to evaluate a stage's K identically configured knowledge types.

- ``loop`` — each :class:`~tzkgraph.model.nets.Knowledge` on its own (``TzKStage(stacked=False)``);
- ``stacked`` — :class:`~tzkgraph.model.stacked.StackedKnowledge`, the hand-written batched
  layers (what stages use);
- ``vmap`` — ``torch.func.vmap`` over ``torch.func.functional_call`` of one template module,
  with the K modules' parameters stacked by ``torch.stack`` every step, so gradients reach
  each module's own weights (``torch.func.stack_module_state`` makes new leaf tensors, which
  would not train the modules; the stacking it does is the same).

A step evaluates, for all K at once, what a stage's loss asks of its knowledge networks —
the encoder discriminator and posterior on ``t``, the code flow, the decoder discriminator
and decoder Gaussian on a code — then a scalar of all outputs, backward. The paths are first
checked to agree (float64, outputs and gradients), then timed interleaved (medians).

Usage::

    python tools/bench_stacked.py                       # mnist_digits' digit stage: K=10, t 10-d, code 2-d
    python tools/bench_stacked.py --k 4 --t-dim 64 --hidden 128 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

from tzkgraph.model.nets import Knowledge
from tzkgraph.model.stacked import StackedKnowledge


class _Terms(nn.Module):
    """One knowledge type's network outputs in a step, as ``forward`` (for ``functional_call``)."""

    def __init__(self, knowledge: Knowledge):
        super().__init__()
        self.k = knowledge

    def forward(self, t: Tensor, c: Tensor) -> tuple[Tensor, ...]:
        mean, log_std = self.k.posterior(t, 1)
        u, logdet = self.k.code_forward(c)
        z_mean, z_log_std = self.k.decoder_gaussian(c, 1)
        return (self.k.encoder_logit(t), mean, log_std, u, logdet, self.k.decoder_logit(c),
                z_mean, z_log_std)


def _scalar(outputs) -> Tensor:
    return sum(o.square().mean() for o in outputs)


def loop_step(terms: list[_Terms], t: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    per = [m(t, c[i]) for i, m in enumerate(terms)]
    return tuple(torch.stack(o) for o in zip(*per))


def stacked_step(terms: list[_Terms], t: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    s = StackedKnowledge([m.k for m in terms])
    mean, log_std = s.posterior(t, 1)
    u, logdet = s.code_forward(c)
    z_mean, z_log_std = s.decoder_gaussian(c, 1)
    return (s.encoder_logit(t), mean, log_std, u, logdet, s.decoder_logit(c), z_mean, z_log_std)


def vmap_step(terms: list[_Terms], t: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    template = terms[0]
    named = [dict(m.named_parameters()) for m in terms]
    params = {name: torch.stack([p[name] for p in named]) for name in named[0]}
    buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in terms])
               for name, _ in template.named_buffers()}

    def one(p, b, ci):
        return torch.func.functional_call(template, (p, b), (t, ci))

    return torch.func.vmap(one, in_dims=(0, 0, 0))(params, buffers, c)


PATHS = {"loop": loop_step, "stacked": stacked_step, "vmap": vmap_step}


def build(k: int, t_dim: int, z_dim: int, code_dim: int, hidden: int, dtype, seed: int = 0):
    torch.manual_seed(seed)
    terms = [_Terms(Knowledge((t_dim,), z_dim, code_dim, hidden, code_hidden=hidden)).to(dtype)
             for _ in range(k)]
    t = torch.randn(64, t_dim, dtype=dtype)
    c = torch.randn(k, 64, code_dim, dtype=dtype)
    for i, m in enumerate(terms):  # ActNorms' data-dependent initialisation, then away from it
        m(t, c[i])
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return terms, t, c


def check(args) -> None:
    terms, t, c = build(args.k, args.t_dim, args.z_dim, args.code_dim, args.hidden, torch.float64)
    reference = None
    for name, step in PATHS.items():
        for m in terms:
            m.zero_grad(set_to_none=True)
        outputs = step(terms, t, c)
        _scalar(outputs).backward()
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                           for m in terms for p in m.parameters()])
        if reference is None:
            reference = (outputs, grads)
            continue
        gap = max(float((a - b).detach().abs().max()) for a, b in zip(outputs, reference[0]))
        ggap = float((grads - reference[1]).abs().max())
        print(f"{name} vs loop: outputs |Δ| {gap:.1e}, gradients |Δ| {ggap:.1e}")
        if gap > 1e-10 or ggap > 1e-10:
            raise SystemExit(f"bench_stacked: {name} does not compute what loop does")


def time_paths(args) -> dict[str, list[float]]:
    terms, t, c = build(args.k, args.t_dim, args.z_dim, args.code_dim, args.hidden, torch.float32)
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    for rep in range(args.reps):
        order = list(PATHS) if rep % 2 == 0 else list(PATHS)[::-1]
        for name in order:
            for _ in range(args.warmup):
                _scalar(PATHS[name](terms, t, c)).backward()
            start = time.perf_counter()
            for _ in range(args.steps):
                _scalar(PATHS[name](terms, t, c)).backward()
            times[name].append((time.perf_counter() - start) * 1e3 / args.steps)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=10, help="knowledge types (default 10, the digits)")
    p.add_argument("--t-dim", type=int, default=10, help="observation dim (default 10: images/mnist's code)")
    p.add_argument("--z-dim", type=int, default=10, help="the t-flow latent's dim (default 10)")
    p.add_argument("--code-dim", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); K={args.k}, t {args.t_dim}-d, "
          f"z {args.z_dim}-d, code {args.code_dim}-d, hidden {args.hidden}, batch 64")
    check(args)
    times = time_paths(args)
    base = statistics.median(times["loop"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<8} {median:7.2f} ms/step (forward + backward; range {min(values):.2f}-"
              f"{max(values):.2f}), {base / median:.2f}x loop")


if __name__ == "__main__":
    main()
