"""``tzkgraph eval``: bits/dim, discriminator accuracy and knowledge gap of every stage of a trained graph."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tzkgraph.core.files import atomic_write
from tzkgraph.core.runtime import pick_device, seeded
from tzkgraph.data.dataset import GraphData, load_graph_data
from tzkgraph.data.sources import SOURCE_SIZE
from tzkgraph.model.density import bits_per_dim, gaussian_log_prob
from tzkgraph.core.errors import TzkError
from tzkgraph.model.estimates import decoder_log_density, decoder_log_odds
from tzkgraph.graph.model import TzKGraph
from tzkgraph.graph.rundir import load_trained, run_directory  # (re-exported: imported from here)
from tzkgraph.spec.types import GraphSpec, StageSpec

__all__ = ["run_directory", "load_trained", "measured_on", "evaluate", "evaluate_run",
           "format_report", "write_report", "read_report"]


def measured_on(spec: GraphSpec, stage: str) -> str:
    """What a stage's bits/dim are measured on, e.g. ``"32×32×1, 8-bit, uniform dequantisation"``."""
    if spec.stage(stage).is_root:
        image = spec.data.image
        return f"{image.size}×{image.size}×{image.channels}, {image.bits}-bit, uniform dequantisation"
    observed = " + ".join(spec.stage(stage).observe)
    return f"{spec.t_shape(stage)[0]}-dim codes of {observed}, continuous (no dequantisation)"


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _group_right(scores: Tensor, e: Tensor, exclusive: bool, threshold: float) -> Tensor:
    """``(n,)`` bool: a group's decision is right — the argmax member is the present one
    (exclusive groups, examples with exactly one member present), or every member's
    ``score > threshold`` matches its ``e`` (bit groups). ``scores``, ``e``: ``(n, |group|)``."""
    if exclusive:
        return (scores.argmax(1) == e.float().argmax(1)) & (e.sum(1) == 1)
    return ((scores > threshold) == e).all(1)


def _bpd(dims: int, bits: int | None):
    """nll (nats, or ``None``) ↦ bits/dim (or ``None``)."""
    return lambda nll: None if nll is None else float(bits_per_dim(nll, dims, bits))


def _content_dims(spec: GraphSpec, stage: str) -> int | None:
    """Dimensions of the sources' own pixels in a root stage's padded images (``None`` if unpadded)."""
    if not spec.stage(stage).is_root or spec.data.image.size <= SOURCE_SIZE:
        return None
    return SOURCE_SIZE * SOURCE_SIZE * spec.data.image.channels


def _content_bpd(bpd: float | None, dims: int, content: int) -> float | None:
    """Bits per dimension of the unpadded content, an upper bound from the padded image's.

    ``P(content) ≥ P(content, border)``, so the padded image's bits, all charged to the
    content's dimensions, bound the content's bits per dimension from above (the border
    is constant: a good model spends almost nothing on it, so the bound is nearly tight
    in bits but not per dimension).
    """
    return None if bpd is None else bpd * dims / content


def _present(data: GraphData, stage: StageSpec) -> Tensor:
    """``e`` of every example for each of the stage's knowledge types, ``(N, K)`` bool."""
    columns = [data.present(k.present) for k in stage.knowledge]
    return torch.stack(columns, 1) if columns else data.labels.new_zeros(len(data), 0, dtype=torch.bool)


class _Pass:
    """One pass over the data, walking the DAG in topological order; keeps running sums."""

    def __init__(self, model: TzKGraph, data: GraphData, iw_samples: int = 16, code_samples: int = 16):
        self.model, self.spec, self.data = model, model.spec, data
        self.iw_samples, self.code_samples = iw_samples, code_samples
        self.observed_refs = {ref for s in self.spec.stages for ref in s.parents}  # (stage, knowledge)
        self.posteriors: dict[tuple[str, str], tuple[Tensor, tuple[Tensor, Tensor]]] = {}  # this batch's
        self.present = {s.name: _present(data, s) for s in self.spec.stages}  # stage -> (N, K) bool
        self.sums: dict[str, defaultdict[str, float]] = {s: defaultdict(float) for s in self.spec.order}

    @torch.no_grad()
    def batch(self, index: Tensor) -> None:
        masks: dict[str, Tensor] = {}   # stage -> (B,) bool: the batch rows that reach it
        codes: dict[str, dict[str, Tensor]] = {}   # stage -> knowledge -> (B, C), c ~ p(c | e=1, t)
        for name in self.spec.order:
            spec = self.spec.stage(name)
            if spec.is_root:
                mask = torch.ones_like(index, dtype=torch.bool)
                t = self.data.observations(index, fixed=True)
            else:
                mask = torch.ones_like(index, dtype=torch.bool)
                for parent, k in spec.parents:
                    col = self.spec.stage(parent).knowledge_names.index(k)
                    mask = mask & masks[parent] & self.present[parent][index, col]
                t = torch.cat([codes[parent][k][mask] for parent, k in spec.parents], dim=1)
            masks[name] = mask
            codes[name] = self._stage(name, t, self.present[name][index][mask], mask)
        if self.code_samples > 1 and any(not self.spec.stage(n).is_root for n in self.spec.order):
            self._marginal(index, masks)

    def _marginal(self, index: Tensor, masks: dict[str, Tensor]) -> None:
        """Child stages' group accuracies with their observed codes marginalised.

        The hierarchy's classifier is ``p(e | t_root) = E_c[p(e | c)]`` over the parents'
        code posteriors; a single draw (the figures above) is a noisy estimate of it.
        Averaged here over ``code_samples`` draws of every code down the DAG.
        """
        n_draws = self.code_samples
        draws: dict[str, dict[str, Tensor]] = {}  # stage -> knowledge -> (S, B, C)
        for name in self.spec.order:
            spec, stage = self.spec.stage(name), self.model.stages[name]
            wanted = [k for k in spec.knowledge_names if (name, k) in self.observed_refs]
            draws[name] = {}
            if spec.is_root:
                for k in wanted:
                    _, (mean, log_std) = self.posteriors[name, k]  # a root's mask is every row
                    u = mean.expand(n_draws, *mean.shape)
                    draws[name][k] = stage.draw_code(k, u.flatten(0, 1), log_std.expand_as(u).flatten(0, 1)) \
                        .view(u.shape)
                continue
            rows = masks[name].nonzero().flatten()
            if len(rows) == 0 or not stage.names:
                continue
            t = torch.cat([draws[parent][k][:, rows] for parent, k in spec.parents], dim=-1)  # (S, n, D)
            flat = t.flatten(0, 1)
            probs = stage.discriminate(flat).view(n_draws, len(rows), -1).mean(0)  # (n, K)
            e = self.present[name][index][rows]
            exclusive = self.spec.exclusive_groups(name)
            for group, members in spec.groups.items():
                cols = [stage.names.index(k) for k in members]
                right = _group_right(probs[:, cols], e[:, cols], group in exclusive, 0.5)
                self.sums[name][f"group {group}/marginal_correct"] += float(right.sum())
            for k in wanted:
                code = stage.draw_code(k, *stage.knowledge[k].posterior(stage.reads(flat), 1)) \
                    .view(n_draws, len(rows), -1)
                full = code.new_zeros(n_draws, len(index), code.shape[-1])
                full[:, rows] = code
                draws[name][k] = full

    def _code_prior(self, name: str, k: str):
        """``c ↦ log p(c)`` where a child is the prior of the code (its flow density), else ``None``."""
        child = self.spec.prior_of(name, k)
        return None if child is None else self.model.stages[child].log_prob

    def _stage(self, name: str, t: Tensor, e: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Adds one stage's figures on the rows ``t`` (``e``: their (n, K) present bools)."""
        stage, sums, n = self.model.stages[name], self.sums[name], t.shape[0]
        codes = {k: mask.new_zeros(mask.shape[0], stage.knowledge[k].code_dim, dtype=torch.float32)
                 for k in stage.names}
        if n == 0:
            return codes
        z, logdet = stage.t_flow(t)  # (n, D), (n,)
        sums["examples"] += n
        sums["log_p_t"] += float((gaussian_log_prob(z) + logdet).sum())
        if not stage.names:  # a plain flow: only p(t)
            return codes
        probs = stage.discriminate(t, z)  # (n, K) p(e_i = 1 | t)
        said = probs > 0.5
        metrics = stage.loss(t, e.float(), z=z, logdet=logdet, mode="encoder").metrics
        log_p_t = gaussian_log_prob(z) + logdet
        odds = {}  # the decoder classifier's log p_dec(t, e=1) − log p_dec(t, e=0), (n,)
        for i, k in enumerate(stage.names):
            kn, present = stage.knowledge[k], e[:, i]
            posterior = [kn.encoder_posterior[v](stage.reads(t, z)) for v in (0, 1)]  # once: conv nets
            if (name, k) in self.observed_refs:
                self.posteriors[name, k] = (mask, posterior[1])  # for _marginal
            c = stage.draw_code(k, *posterior[1])  # c ~ p(c | e=1, t) (Appendix C)
            codes[k][mask] = c.float()  # what a child observes: the draw, as in training
            mean, log_std = kn.decoder[1](c)
            log_p = gaussian_log_prob(z, mean, log_std) + logdet  # log p(t | e=1, c)
            rows = present.nonzero().flatten()
            prior = self._code_prior(name, k)
            iw = decoder_log_density(stage, k, t[rows], z[rows], logdet[rows], 1, self.iw_samples,
                                     posterior=tuple(x[rows] for x in posterior[1]), code_prior=prior) \
                if len(rows) else z.new_zeros(0)
            odds[k] = decoder_log_odds(stage, k, t, z, logdet, self.iw_samples, posteriors=posterior,
                                       code_prior=prior)
            says = odds[k] > 0
            sums[f"{k}/present"] += float(present.sum())
            sums[f"{k}/log_p"] += float(log_p[present].sum())
            sums[f"{k}/prior_log_p"] += float(log_p_t[present].sum())
            sums[f"{k}/iw_log_p"] += float(iw.sum())
            sums[f"{k}/encoder_correct"] += float((said[:, i] == present).sum())
            sums[f"{k}/true_positive"] += float((said[:, i] & present).sum())
            sums[f"{k}/true_negative"] += float((~said[:, i] & ~present).sum())
            sums[f"{k}/decoder_correct"] += float((says == present).sum())
            sums[f"{k}/decoder_true_positive"] += float((says & present).sum())
            sums[f"{k}/decoder_true_negative"] += float((~says & ~present).sum())
            sums[f"{k}/decoder_given_e_correct"] += float(metrics[f"{k}/decoder_accuracy_given_e"]) * n
            sums[f"{k}/knowledge_gap"] += float(metrics[f"{k}/knowledge_gap"]) * n
        exclusive = self.spec.exclusive_groups(name)
        for group, members in self.spec.stage(name).groups.items():
            cols = [stage.names.index(k) for k in members]
            decoder = torch.stack([odds[k] for k in members], 1)  # (n, |group|)
            only = group in exclusive
            sums[f"group {group}/examples"] += float((e[:, cols].sum(1) == 1).sum()) if only else n
            sums[f"group {group}/correct"] += float(_group_right(probs[:, cols], e[:, cols], only, 0.5).sum())
            sums[f"group {group}/decoder_correct"] += float(_group_right(decoder, e[:, cols], only, 0.0).sum())
        return codes

    def report(self) -> dict[str, Any]:
        out = {}
        for name in self.spec.order:
            spec, sums = self.spec.stage(name), self.sums[name]
            dims = math.prod(self.spec.t_shape(name))
            bits = self.spec.data.image.bits if spec.is_root else None
            n = sums["examples"]
            nll = _ratio(-sums["log_p_t"], n)
            bpd = _bpd(dims, bits)
            content = _content_dims(self.spec, name)
            stage = {"measured_on": measured_on(self.spec, name), "t_shape": list(self.spec.t_shape(name)),
                     "dims": dims, "examples": int(n), "nll": nll, "bits_per_dim": bpd(nll),
                     "knowledge": {}, "groups": {}, "iw_samples": self.iw_samples}
            if content is not None:
                stage["content_dims"] = content
                stage["content_bits_per_dim"] = _content_bpd(stage["bits_per_dim"], dims, content)
            for k in spec.knowledge_names:
                present = sums[f"{k}/present"]
                cond = _ratio(-sums[f"{k}/log_p"], present)
                balanced = lambda tp, tn: (None if _ratio(tp, present) is None or _ratio(tn, n - present) is None
                                           else (tp / present + tn / (n - present)) / 2)
                figures = {
                    "present": int(present), "nll": cond,
                    "prior_bits_per_dim": bpd(_ratio(-sums[f"{k}/prior_log_p"], present)),
                    "bits_per_dim": bpd(cond),
                    "iw_bits_per_dim": bpd(_ratio(-sums[f"{k}/iw_log_p"], present)),
                    "encoder_accuracy": _ratio(sums[f"{k}/encoder_correct"], n),
                    "encoder_balanced_accuracy": balanced(sums[f"{k}/true_positive"],
                                                          sums[f"{k}/true_negative"]),
                    "decoder_classifier_accuracy": _ratio(sums[f"{k}/decoder_correct"], n),
                    "decoder_classifier_balanced_accuracy": balanced(sums[f"{k}/decoder_true_positive"],
                                                                     sums[f"{k}/decoder_true_negative"]),
                    "decoder_accuracy_given_e": _ratio(sums[f"{k}/decoder_given_e_correct"], n),
                    "knowledge_gap": _ratio(sums[f"{k}/knowledge_gap"], n),
                }
                if content is not None:
                    for key in ("prior_bits_per_dim", "bits_per_dim", "iw_bits_per_dim"):
                        figures[f"content_{key}"] = _content_bpd(figures[key], dims, content)
                stage["knowledge"][k] = figures
            exclusive = self.spec.exclusive_groups(name)
            for group, members in spec.groups.items():
                m = sums[f"group {group}/examples"]
                key = "argmax_accuracy" if group in exclusive else "exact_match_accuracy"
                stage["groups"][group] = {"members": members, "exclusive": group in exclusive,
                                          "examples": int(m), key: _ratio(sums[f"group {group}/correct"], m),
                                          f"decoder_{key}": _ratio(sums[f"group {group}/decoder_correct"], m)}
                if not spec.is_root and self.code_samples > 1:
                    stage["groups"][group][f"marginal_{key}"] = _ratio(sums[f"group {group}/marginal_correct"], m)
                    stage["groups"][group]["code_samples"] = self.code_samples
            out[name] = stage
        return out


def evaluate(model: TzKGraph, data: GraphData, *, examples: int | None = None, batch_size: int = 256,
             seed: int = 0, progress: bool = True, iw_samples: int = 16,
             code_samples: int = 16) -> dict[str, Any]:
    """Every stage's figures on ``data`` (the paper's Appendix C), as plain JSON-ready data.

    Per stage: bits/dim of the prior ``p(t)`` (and, for padded images, an upper bound
    for the unpadded content's pixels alone). Per knowledge type, over the examples where
    it is present: the prior's bits/dim on those same examples; the paper's one-sample
    conditional ``log p(t | e=1, c)``, ``c ~ p(c | e=1, t)`` (Appendix C, not a bound);
    an importance-weighted bound on ``log ∫ p(t | e=1, c) p(c) dc`` with ``iw_samples``
    codes (:mod:`tzkgraph.model.estimates`). Over all examples: the encoder discriminator's
    accuracy (``p(e|t) > ½``), the decoder as a classifier (``p_dec(e=1 | t) > ½`` by
    Bayes' rule on its joint, label unseen), ``p(e|c)`` on a code drawn knowing ``e``
    (``decoder_accuracy_given_e``, what training logs) and the knowledge gap
    ``log p_dec(t,k) − log p_enc(t,k)``. Per group, argmax accuracy (exclusive
    groups, over examples with exactly one member present) or exact-match accuracy
    of all members, for the encoder and the decoder classifier; for a child stage also
    with its observed codes marginalised (``code_samples`` draws). A child stage is
    evaluated on ``c ~ p(c | e=1, t)`` of its parents, for the examples present in
    every parent knowledge it observes.

    Arguments:
        model: the trained graph (put in eval mode here).
        data: the split to evaluate, on the model's device.
        examples: evaluate a random subset of this many examples (``None``: all).
        batch_size: examples per batch.
        seed: seeds the subset and the code samples.
        progress: show a tqdm bar.
        iw_samples: codes per example of the importance-weighted estimates.
        code_samples: draws of the parents' codes over which a child stage's group
            accuracies are also averaged (``p(e | t_root) = E_c[p(e | c)]``; 1: not).
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(len(data))
    if examples is not None and examples < len(data):
        index = torch.randperm(len(data), generator=generator)[:examples].sort().values
    index = index.to(data.images.device)
    state = _Pass(model, data, iw_samples, code_samples)
    with seeded(seed, data.images.device):
        for start in tqdm(range(0, len(index), batch_size), desc=f"eval {model.spec.name}", unit="batch",
                          disable=not progress, dynamic_ncols=True):
            state.batch(index[start:start + batch_size])
    return {"graph": model.spec.name, "examples": len(index), "seed": seed, "iw_samples": iw_samples,
            "stages": state.report()}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table (what ``tzkgraph eval`` prints)."""
    head = f"{report['graph']}: split {report.get('split', '?')}, {report['examples']} examples"
    if "step" in report:
        head += f", checkpoint step {report['step']}"
        head += "" if report.get("finished", True) else " (unfinished)"
    lines = [head]
    for name, stage in report["stages"].items():
        lines += ["", f"{name}  [{stage['measured_on']}; {stage['examples']} examples]",
                  f"  prior p(t): {_fmt(stage['bits_per_dim'])} bits/dim"
                  + (f" ({_fmt(stage['content_bits_per_dim'])} per pixel of the unpadded "
                     f"{stage['content_dims']}, an upper bound)" if "content_dims" in stage else "")]
        if stage["knowledge"]:
            iw = f"iw{stage.get('iw_samples', '')}"
            lines.append(f"  {'knowledge':<12}{'present':>8}{'prior':>8}{'cond':>8}{iw:>8}{'enc acc':>9}"
                         f"{'dec clf':>9}{'dec|e':>8}{'gap (nats)':>12}")
        for k, v in stage["knowledge"].items():
            lines.append(f"  {k:<12}{v['present']:>8}{_fmt(v.get('prior_bits_per_dim')):>8}"
                         f"{_fmt(v['bits_per_dim']):>8}{_fmt(v.get('iw_bits_per_dim')):>8}"
                         f"{_fmt(v['encoder_accuracy']):>9}{_fmt(v.get('decoder_classifier_accuracy')):>9}"
                         f"{_fmt(v.get('decoder_accuracy_given_e')):>8}{_fmt(v['knowledge_gap'], '.2f'):>12}")
        for group, v in stage["groups"].items():
            what = "argmax accuracy" if v["exclusive"] else "exact match of all members"
            key = "argmax_accuracy" if v["exclusive"] else "exact_match_accuracy"
            lines.append(f"  group {group}: {what} {_fmt(v.get(key))} (encoder), "
                         f"{_fmt(v.get('decoder_' + key))} (decoder classifier) over {v['examples']} examples")
            if f"marginal_{key}" in v:
                lines.append(f"    with the observed codes marginalised over {v['code_samples']} draws: "
                             f"{_fmt(v[f'marginal_{key}'])} (encoder)")
    if any(stage["knowledge"] for stage in report["stages"].values()):
        lines += ["", "bits/dim over each knowledge type's present examples: prior = p(t), cond = p(t|e=1,c) "
                      "at one c ~ p(c|e=1,t) (Appendix C),", "iwS = importance-weighted bound on "
                      "p(t|e=1) with S codes; accuracies over all examples: enc = p(e|t), dec clf = "
                      "the decoder by Bayes' rule,", "dec|e = p(e|c) at a code drawn knowing e"]
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Writes the report as JSON, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))


def read_report(spec: GraphSpec, split: str | None = None) -> dict[str, Any] | None:
    """The last ``eval`` report of the graph's run (``split``, else test, else train), or ``None``."""
    for name in [split] if split else ["test", "train"]:
        path = run_directory(spec) / f"eval-{name}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
    return None


def evaluate_run(spec: GraphSpec, *, split: str = "test", examples: int | None = None,
                 batch_size: int = 256, seed: int = 0, progress: bool = True, iw_samples: int = 16,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Loads the run's checkpoint, evaluates ``split``, prints the table and writes ``eval-<split>.json``.

    Returns:
        The report (also in ``out_dir/name/eval-<split>.json``).
    """

    device = pick_device(spec.train.device)
    model, state = load_trained(spec, device)
    data = load_graph_data(spec.data, split, device=device)
    report = {"graph": spec.name, "split": split, "step": int(state["step"]),
              "finished": bool(state["finished"]), "checkpoint": str(run_directory(spec) / "checkpoint.pt")}
    report.update(evaluate(model, data, examples=examples, batch_size=batch_size, seed=seed,
                           progress=progress, iw_samples=iw_samples))
    path = write_report(report, run_directory(spec) / f"eval-{split}.json")
    say(format_report(report))
    say(f"written to {path}")
    return report

