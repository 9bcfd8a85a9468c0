"""The knowledge graph of a spec as a picture: DOT text, or PNG/SVG drawn with matplotlib."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import networkx as nx

from tzkgraph.core.errors import TzkError
from tzkgraph.core.files import atomic_write
from tzkgraph.graph.plan import plan_phase
from tzkgraph.spec.load import range_members
from tzkgraph.spec.types import FLOW_PART, GraphSpec, StageSpec

__all__ = ["GRAPH_SUFFIXES", "JUDGE_TEMPERATURES", "phase_summary", "knowledge_graph", "read_judge", "to_dot",
           "draw", "write_graph"]

GRAPH_SUFFIXES = (".svg", ".png", ".dot")
JUDGE_TEMPERATURES = ("0.7", "1")  # the sample accuracies a group's node shows (judge.json's "T=..." keys)
_COLOURS = {"data": "#e0e0e0", "stage": "#cfe2f3", "knowledge": "#d9ead3"}
_FONT = 8  # points
_PAD = 0.4  # a box's padding around its text, in font sizes
_GAP = (0.22, 0.38)  # inches between boxes side by side, and between rows (room for an edge's label)
_MARGIN = 0.12  # inches around the picture
_CAPTION_CHARS = 60  # the caption wraps at the picture's width, but at least this many characters


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def _compress(spec: GraphSpec, parts: set[str]) -> list[str]:
    """Atomic parts named as briefly as the YAML allows: ``digits`` or ``digits/0..9`` for a whole group."""
    out = []
    for stage in spec.stages:
        mine = [p for p in spec.expand_part(stage.name) if p in parts]
        if not mine:
            continue
        if len(mine) == len(spec.expand_part(stage.name)):
            out.append(stage.name)
            continue
        for group, members in stage.groups.items():
            if len(members) > 1 and all(f"{stage.name}/{k}" in parts for k in members):
                out.append(f"{stage.name}/{group}")
                mine = [p for p in mine if p.split("/", 1)[1] not in members]
        out += mine
    return out


def phase_summary(spec: GraphSpec) -> list[dict[str, Any]]:
    """Per phase: its steps, the parts it trains and freezes, and the frozen outputs it caches."""
    out = []
    for phase in spec.train.phases:
        trains = spec.trainable(phase)
        plan = plan_phase(spec, trains)
        cached = ([f"{s}/t_flow" for s in sorted(plan.cached_flow)]
                  + [f"{s}/codes" for s in sorted(plan.cached_codes)])
        out.append({"name": phase.name, "steps": phase.steps, "trains": _compress(spec, set(trains)),
                    "frozen": _compress(spec, set(spec.atomic_parts()) - trains), "cached": cached})
    return out


def _sample_accuracy(measured: dict[str, Any], temperature: str) -> float | None:
    """judge.json's accuracy at ``temperature``: of the model's sampler (the most candidates,
    ``"T=0.7, guide=64"``) where measured, else of the decoder alone (``"T=0.7"``)."""
    keys = [k for k in measured if k == f"T={temperature}" or k.startswith(f"T={temperature}, guide=")]
    keys.sort(key=lambda k: int(k.rpartition("=")[2]) if ", guide=" in k else 0)
    for key in reversed(keys):
        if isinstance(measured[key], dict) and measured[key].get("accuracy") is not None:
            return measured[key]["accuracy"]
    return None


def _training_phases(spec: GraphSpec, part: str) -> list[str]:
    return [phase.name for phase in spec.train.phases if part in spec.trainable(phase)]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _span(values: list[float | None]) -> str:
    """``"0.91–0.99"`` (min–max of the measured values), one value alone, or ``"-"``."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    low, high = _fmt(min(known)), _fmt(max(known))
    return low if low == high else f"{low}–{high}" if min(known) >= 0 else f"{low} to {high}"


def _balanced(figures: dict[str, Any], examples: int | None) -> str:
    """A knowledge type's balanced accuracy; where ``e`` takes one value only it is undefined,
    and the plain accuracy, shown instead, says so."""
    balanced = figures.get("encoder_balanced_accuracy")
    if balanced is not None or figures.get("encoder_accuracy") is None:
        return f"balanced acc {_fmt(balanced)}"
    present = figures.get("present")
    one = "0" if present == 0 else "1" if present is not None and present == examples else None
    return f"acc {_fmt(figures['encoder_accuracy'])}" + (f" (e={one} on all)" if one else "")


def _drawn_groups(stage: StageSpec) -> dict[str, list[str]]:
    """The stage's groups of several knowledge types: each drawn as one node."""
    return {group: members for group, members in stage.groups.items() if len(members) > 1}


def _node_of(spec: GraphSpec, stage: str, knowledge: str) -> str:
    """The node that draws ``stage/knowledge``: its group's (``digits/0..9``) or its own."""
    for group, members in _drawn_groups(spec.stage(stage)).items():
        if knowledge in members:
            return f"{stage}/{group}"
    return f"{stage}/{knowledge}"


def _is_range(group: str, members: list[str]) -> bool:
    """Whether the group's name spells its members as a range (``0..9``, ``bit0..3``)."""
    return range_members(group) == members


def _present_rule(stage: StageSpec, members: list[str]) -> str:
    """The members' ``present`` rule as the YAML's group wrote it (``label=$name``), else each one's."""
    def template(name: str) -> str:
        index = re.search(r"\d+$", name)
        parts = []
        for key, value in stage.get(name).present.to_dict().items():
            if str(value) == name:
                value = "$name"
            elif index is not None and str(value) == str(int(index.group())):
                value = "$i"
            parts.append(f"{key}={value}")
        return " & ".join(parts) or "always"

    rules = {template(k) for k in members}
    if len(rules) == 1:
        return rules.pop()
    return "; ".join(f"{k}: {stage.get(k).present}" for k in members)


def _group_label(spec: GraphSpec, stage: StageSpec, group: str, members: list[str],
                 figures: dict[str, Any], judge: dict[str, Any] | None) -> str:
    dims = sorted({stage.get(k).code_dim for k in members})
    code = f"c ∈ R^{dims[0]} each" if len(dims) == 1 else f"c ∈ R^{dims[0]}..R^{dims[-1]}"
    lines = [f"{group}: {len(members)} types, {code}"]
    if not _is_range(group, members):
        lines.append(", ".join(members))
    phases = {k: _training_phases(spec, f"{stage.name}/{k}") for k in members}
    trains = [p.name + ("" if all(p.name in v for v in phases.values()) else " (some)")
              for p in spec.train.phases if any(p.name in v for v in phases.values())]
    lines += [f"present: {_present_rule(stage, members)}", f"trains in: {', '.join(trains) or 'none'}"]
    if figures:
        knowledge, groups = figures.get("knowledge", {}), figures.get("groups", {})
        result = groups.get(group, {})
        key = "argmax_accuracy" if result.get("exclusive", True) else "exact_match_accuracy"
        what = "argmax acc" if key == "argmax_accuracy" else "exact-match acc"
        lines.append(f"{what} {_fmt(result.get(key))} (decoder {_fmt(result.get('decoder_' + key))})")
        lines.append("balanced acc " + _span([knowledge.get(k, {}).get("encoder_balanced_accuracy")
                                              for k in members]) + " per type")
        lines.append(_span([knowledge.get(k, {}).get("bits_per_dim") for k in members]) + " bits/dim")
    measured = ((judge or {}).get("paths") or {}).get(f"{stage.name}/{group}", {})
    samples = [f"{figure:.2f} (T={t})" for t in JUDGE_TEMPERATURES
               if (figure := _sample_accuracy(measured, t)) is not None]
    if samples:
        lines.append(f"sample acc {', '.join(samples)}")
    return "\n".join(lines)


def knowledge_graph(spec: GraphSpec, report: dict[str, Any] | None = None,
                    judge: dict[str, Any] | None = None) -> nx.DiGraph:
    """The picture's structure: data, stage and knowledge nodes with ready-made labels.

    Nodes: ``"data"`` (kind ``data``), every stage (kind ``stage``: its ``t``
    and t-flow) and, kind ``knowledge``, every ``STAGE/KNOWLEDGE`` — except that
    a group of several types is one node ``STAGE/GROUP`` (``digits/0..9``) with
    their names in ``members``; each has a ``label`` (lines joined by newlines)
    and, but data, its ``stage``. Edges: data → root stages (``observe``),
    stage → its knowledge (``knowledge``), and knowledge → the stage observing its
    code (``code``, the graph's code→observation edges, with a ``label``).

    With an eval ``report``, a stage's label carries its prior's bits/dim, a knowledge
    type's its balanced accuracy (``(TPR + TNR)/2`` of ``p(e|t) > ½``: 0.5 is chance,
    whatever the share of positives) and bits/dim, a group's its argmax (or
    exact-match) accuracy for the encoder and the decoder classifier, the balanced
    accuracy of its types (min–max) and their bits/dim. With a ``judge`` report
    (``RUN/judge.json``, :mod:`tzkgraph.use.sample_quality`), a group also shows its
    sample accuracy at the temperatures :data:`JUDGE_TEMPERATURES`.
    """
    stages = (report or {}).get("stages", {})
    phases = phase_summary(spec)
    graph = nx.DiGraph(name=spec.name)
    if spec.data is not None:
        image = spec.data.image
        sources = ", ".join(f"{s.name} ({s.dataset})" for s in spec.data.sources)
        resolution = f"{image.size}×{image.size}×{image.channels}, {image.bits}-bit"
        graph.add_node("data", kind="data", label=f"data\n{sources}\n{resolution}")
    for name in spec.order:
        stage = spec.stage(name)
        flow = stage.flow
        size = f"{flow.levels} levels × {flow.steps} steps" if stage.is_root else f"{flow.steps} steps"
        lines = [f"{name}: t ∈ R^{_shape(spec.t_shape(name))}", f"t-flow {size}, {flow.hidden} hidden"]
        trains = _training_phases(spec, f"{name}/{FLOW_PART}")
        lines.append(f"trains in: {', '.join(trains) or 'none'}")
        cached = [p["name"] for p in phases
                  if f"{name}/t_flow" in p["cached"] or f"{name}/codes" in p["cached"]]
        if cached:
            lines.append(f"cached in: {', '.join(cached)}")
        if stages.get(name, {}).get("bits_per_dim") is not None:
            lines.append(f"prior {stages[name]['bits_per_dim']:.2f} bits/dim")
        graph.add_node(name, kind="stage", stage=name, label="\n".join(lines))
        if stage.is_root and "data" in graph:
            graph.add_edge("data", name, kind="observe")
        for parent, k in stage.parents:
            source = _node_of(spec, parent, k)
            if graph.has_edge(source, name):  # several codes of one group
                graph.edges[source, name]["codes"].append(k)
            else:
                graph.add_edge(source, name, kind="code", codes=[k])
        groups = _drawn_groups(stage)
        for k in stage.knowledge:
            node = _node_of(spec, name, k.name)
            if node in graph:
                continue
            if k.group in groups:
                members = groups[k.group]
                label = _group_label(spec, stage, k.group, members, stages.get(name, {}), judge)
            else:
                members = [k.name]
                lines = [f"{k.name}: c ∈ R^{k.code_dim}", f"present: {k.present}",
                         f"trains in: {', '.join(_training_phases(spec, f'{name}/{k.name}')) or 'none'}"]
                figures = stages.get(name, {}).get("knowledge", {}).get(k.name)
                if figures:
                    lines.append(f"{_balanced(figures, stages[name].get('examples'))} · "
                                 f"{_fmt(figures.get('bits_per_dim'))} bits/dim")
                label = "\n".join(lines)
            graph.add_node(node, kind="knowledge", stage=name, members=members, label=label)
            graph.add_edge(name, node, kind="knowledge")
    for a, b, data in graph.edges(data=True):
        if data["kind"] == "code":
            grouped = graph.nodes[a]["members"] != data["codes"]
            data["label"] = f"code{'s' if len(data['codes']) > 1 else ''} of {', '.join(data['codes'])} → t" \
                if grouped else "code → t"
    return graph


def read_judge(spec: GraphSpec) -> dict[str, Any] | None:
    """The run's sample accuracies (``RUN/judge.json``, written by ``tools/judge.py``), or ``None``."""
    from tzkgraph.graph.rundir import run_directory

    path = run_directory(spec) / "judge.json"
    try:
        judge = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return judge if isinstance(judge, dict) else None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _caption(spec: GraphSpec, report: dict[str, Any] | None, judge: dict[str, Any] | None) -> list[str]:
    lines = [f"{spec.name} — phases in order:"]
    for i, p in enumerate(phase_summary(spec), 1):
        line = (f"{i}. {p['name']} ({p['steps']} steps): trains {', '.join(p['trains'])}; "
                f"frozen {', '.join(p['frozen']) or 'nothing'}")
        lines.append(line + (f"; cached {', '.join(p['cached'])}" if p["cached"] else ""))
    if report is not None:
        lines.append(f"figures: eval on the {report.get('split', '?')} split ({report.get('examples', '?')} "
                     f"examples, step {report.get('step', '?')}); balanced acc = (TPR + TNR)/2 of the "
                     f"encoder's p(e|t) > ½, 0.5 = chance (a group: min–max of its types); a group's argmax "
                     f"acc: encoder (decoder classifier)")
    if judge is not None:
        lines.append(f"sample acc: the share of samples down a group read as the chosen digit by an "
                     f"independent CNN ({judge.get('n', '?')} per digit, judge.json)")
    return lines


def to_dot(spec: GraphSpec, report: dict[str, Any] | None = None, judge: dict[str, Any] | None = None) -> str:
    """The knowledge graph as Graphviz DOT text: one cluster per stage, code edges in bold."""
    graph = knowledge_graph(spec, report, judge)
    shapes = {"data": "cylinder", "stage": "box", "knowledge": "ellipse"}
    out = [f"digraph {_quote(spec.name)} {{", "  rankdir=TB;", "  labelloc=b;",
           f"  label={_quote(chr(10).join(_caption(spec, report, judge)))};",
           '  node [fontname="Helvetica", fontsize=10, style=filled];']
    if "data" in graph:
        out.append(f"  \"data\" [shape=cylinder, fillcolor=\"{_COLOURS['data']}\", "
                   f"label={_quote(graph.nodes['data']['label'])}];")
    for name in spec.order:
        out.append(f"  subgraph {_quote('cluster_' + name)} {{")
        out.append(f"    label={_quote(name)}; style=rounded;")
        for node in [n for n, stage in graph.nodes(data="stage") if stage == name]:
            kind = graph.nodes[node]["kind"]
            out.append(f"    {_quote(node)} [shape={shapes[kind]}, fillcolor=\"{_COLOURS[kind]}\", "
                       f"label={_quote(graph.nodes[node]['label'])}];")
        out.append("  }")
    for a, b, data in graph.edges(data=True):
        style = {"observe": "", "knowledge": " [arrowhead=none]",
                 "code": f" [style=bold, label={_quote(data.get('label', ''))}]"}[data["kind"]]
        out.append(f"  {_quote(a)} -> {_quote(b)}{style};")
    out.append("}")
    return "\n".join(out) + "\n"


def _layout(spec: GraphSpec, graph: nx.DiGraph) -> list[list[str]]:
    """Layers top to bottom: data, then per depth a row of stages and a row of their knowledge."""
    depth = {name: 0 for name in spec.order}
    for name in spec.order:
        for parent, _ in spec.parents(name):
            depth[name] = max(depth[name], depth[parent] + 1)
    layers: list[list[str]] = [["data"] if "data" in graph else []]
    layers += [[] for _ in range(2 * (max(depth.values()) + 1))]
    for name in spec.order:
        layers[1 + 2 * depth[name]].append(name)
        layers[2 + 2 * depth[name]] += list(graph.successors(name))
    return [layer for layer in layers if layer]


def draw(spec: GraphSpec, report: dict[str, Any] | None = None, judge: dict[str, Any] | None = None):
    """The knowledge graph drawn on a matplotlib :class:`~matplotlib.figure.Figure` (Agg, no pyplot).

    Nodes are placed in layers (see :func:`_layout`), each ordered by the mean
    position of its nodes' predecessors and packed by the boxes' measured sizes;
    the phase table, wrapped to the picture's width, is the caption.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    graph = knowledge_graph(spec, report, judge)
    layers = _layout(spec, graph)
    fig = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    boxes = {"data": "round4", "stage": "square", "knowledge": "round"}
    texts = {n: ax.text(0, 0, graph.nodes[n]["label"], ha="center", va="center", fontsize=_FONT, zorder=3,
                        bbox=dict(boxstyle=f"{boxes[graph.nodes[n]['kind']]},pad={_PAD}",
                                  fc=_COLOURS[graph.nodes[n]["kind"]], ec="#555555"))
             for n in graph}
    renderer = fig.canvas.get_renderer()
    pad = 2 * _PAD * _FONT / 72
    extents = {n: t.get_window_extent(renderer) for n, t in texts.items()}  # pixels, text alone
    size = {n: (e.width / fig.dpi + pad, e.height / fig.dpi + pad) for n, e in extents.items()}  # inches, boxed
    x: dict[str, float] = {}  # box centres, inches
    for layer in layers:
        centre = {n: sum(x[p] for p in graph.predecessors(n)) / max(1, graph.in_degree(n)) for n in layer}
        layer.sort(key=lambda n: centre[n])
        total = sum(size[n][0] for n in layer) + _GAP[0] * (len(layer) - 1)
        left = sum(centre.values()) / len(layer) - total / 2
        for node in layer:
            x[node] = left + size[node][0] / 2
            left += size[node][0] + _GAP[0]
    low = min(x[n] - size[n][0] / 2 for n in x)
    high = max(x[n] + size[n][0] / 2 for n in x)
    caption = ax.text(_MARGIN, _MARGIN, "0" * 100, ha="left", va="bottom", fontsize=_FONT, family="monospace",
                      linespacing=1.1)
    char = caption.get_window_extent(renderer).width / fig.dpi / 100  # inches per character
    caption.set_text("\n".join(part for line in _caption(spec, report, judge) for part in textwrap.wrap(
        line, max(_CAPTION_CHARS, int((high - low) / char)), subsequent_indent="   ")))
    extent = caption.get_window_extent(renderer)
    width = max(high - low, extent.width / fig.dpi) + 2 * _MARGIN
    heights = [max(size[n][1] for n in layer) for layer in layers]
    height = sum(heights) + _GAP[1] * len(layers) + extent.height / fig.dpi + 2 * _MARGIN
    shift = width / 2 - (low + high) / 2
    points, top = {}, height - _MARGIN
    for layer, h in zip(layers, heights):
        for node in layer:
            points[node] = (shift + x[node], top - h / 2)
        top -= h + _GAP[1]
    fig.set_size_inches(width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    for node, text in texts.items():
        text.set_position(points[node])
    fig.canvas.draw()  # places the boxes, so arrows can stop at their edges
    for a, b, data in graph.edges(data=True):
        kind = data["kind"]
        style = dict(arrowstyle="-" if kind == "knowledge" else "-|>", color="#333333",
                     lw=1.8 if kind == "code" else 0.9, patchA=texts[a].get_bbox_patch(),
                     patchB=texts[b].get_bbox_patch(), shrinkA=2, shrinkB=2)
        ax.annotate("", xy=points[b], xytext=points[a], arrowprops=style, zorder=2)
        if kind == "code":
            (xa, ya), (xb, yb) = points[a], points[b]
            ya -= size[a][1] / 2
            yb += size[b][1] / 2
            ax.text((xa + xb) / 2 + 0.06, (ya + yb) / 2, data["label"], fontsize=_FONT - 1, style="italic",
                    va="center", zorder=4)
    return fig


def write_graph(spec: GraphSpec, output: str | os.PathLike, report: dict[str, Any] | None = None,
                judge: dict[str, Any] | None = None) -> Path:
    """Writes the knowledge graph to ``output`` (``.dot`` text, ``.png`` or ``.svg``), atomically.

    Arguments:
        spec: the graph.
        output: where to write; the suffix picks the format.
        report: an eval report (:func:`tzkgraph.use.evaluate.read_report`): figures on the nodes.
        judge: the run's sample accuracies (:func:`read_judge`): on the digit groups' nodes.

    Raises:
        TzkError: unknown suffix, or the file cannot be written.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in GRAPH_SUFFIXES:
        raise TzkError(f"-o {output}: unknown file type {suffix or '(none)'!r} "
                       f"(known: {', '.join(GRAPH_SUFFIXES)})")
    if not output.parent.is_dir():
        raise TzkError(f"-o {output}: no such folder {output.parent}")
    if suffix == ".dot":
        return atomic_write(output, lambda tmp: Path(tmp).write_text(to_dot(spec, report, judge)))
    figure = draw(spec, report, judge)
    return atomic_write(output, lambda tmp: figure.savefig(tmp, format=suffix[1:]))
