"""The knowledge graph of a spec as a picture: DOT text, or PNG/SVG drawn with matplotlib."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import networkx as nx

from tzkgraph.core.errors import TzkError
from tzkgraph.core.files import atomic_write
from tzkgraph.graph.plan import plan_phase
from tzkgraph.spec.types import FLOW_PART, GraphSpec

__all__ = ["GRAPH_SUFFIXES", "phase_summary", "knowledge_graph", "to_dot", "draw", "write_graph"]

GRAPH_SUFFIXES = (".svg", ".png", ".dot")
_COLOURS = {"data": "#e0e0e0", "stage": "#cfe2f3", "knowledge": "#d9ead3"}
_FONT = 8  # points


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


def _training_phases(spec: GraphSpec, part: str) -> list[str]:
    return [phase.name for phase in spec.train.phases if part in spec.trainable(phase)]


def knowledge_graph(spec: GraphSpec, report: dict[str, Any] | None = None) -> nx.DiGraph:
    """The picture's structure: data, stage and knowledge nodes with ready-made labels.

    Nodes: ``"data"`` (kind ``data``), every stage (kind ``stage``: its ``t``
    and t-flow) and every ``STAGE/KNOWLEDGE`` (kind ``knowledge``); each has a
    ``label`` (lines joined by newlines). Edges: data → root stages
    (``observe``), stage → its knowledge (``knowledge``), and knowledge → the
    stage observing its code (``code``, the graph's code→observation edges).
    With an eval ``report``, labels carry bits/dim and discriminator accuracy.
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
        graph.add_node(name, kind="stage", label="\n".join(lines))
        if stage.is_root and "data" in graph:
            graph.add_edge("data", name, kind="observe")
        for parent, k in stage.parents:
            graph.add_edge(f"{parent}/{k}", name, kind="code")
        for k in stage.knowledge:
            lines = [k.name, f"c ∈ R^{k.code_dim}", f"present: {k.present}",
                     f"trains in: {', '.join(_training_phases(spec, f'{name}/{k.name}')) or 'none'}"]
            figures = stages.get(name, {}).get("knowledge", {}).get(k.name)
            if figures:
                accuracy, bpd = figures.get("encoder_accuracy"), figures.get("bits_per_dim")
                lines.append(f"acc {'-' if accuracy is None else f'{accuracy:.2f}'} · "
                             f"{'-' if bpd is None else f'{bpd:.2f}'} bpd")
            graph.add_node(f"{name}/{k.name}", kind="knowledge", label="\n".join(lines))
            graph.add_edge(name, f"{name}/{k.name}", kind="knowledge")
    return graph


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _caption(spec: GraphSpec, report: dict[str, Any] | None) -> list[str]:
    lines = [f"{spec.name} — phases in order:"]
    for i, p in enumerate(phase_summary(spec), 1):
        line = (f"{i}. {p['name']} ({p['steps']} steps): trains {', '.join(p['trains'])}; "
                f"frozen {', '.join(p['frozen']) or 'nothing'}")
        lines.append(line + (f"; cached {', '.join(p['cached'])}" if p["cached"] else ""))
    if report is not None:
        lines.append(f"figures: eval on the {report.get('split', '?')} split, {report.get('examples', '?')} "
                     f"examples, step {report.get('step', '?')} (acc = encoder discriminator)")
    return lines


def to_dot(spec: GraphSpec, report: dict[str, Any] | None = None) -> str:
    """The knowledge graph as Graphviz DOT text: one cluster per stage, code edges in bold."""
    graph = knowledge_graph(spec, report)
    shapes = {"data": "cylinder", "stage": "box", "knowledge": "ellipse"}
    out = [f"digraph {_quote(spec.name)} {{", "  rankdir=TB;", "  labelloc=b;",
           f"  label={_quote(chr(10).join(_caption(spec, report)))};",
           '  node [fontname="Helvetica", fontsize=10, style=filled];']
    if "data" in graph:
        out.append(f"  \"data\" [shape=cylinder, fillcolor=\"{_COLOURS['data']}\", "
                   f"label={_quote(graph.nodes['data']['label'])}];")
    for name in spec.order:
        out.append(f"  subgraph {_quote('cluster_' + name)} {{")
        out.append(f"    label={_quote(name)}; style=rounded;")
        for node in [name] + [f"{name}/{k}" for k in spec.stage(name).knowledge_names]:
            kind = graph.nodes[node]["kind"]
            out.append(f"    {_quote(node)} [shape={shapes[kind]}, fillcolor=\"{_COLOURS[kind]}\", "
                       f"label={_quote(graph.nodes[node]['label'])}];")
        out.append("  }")
    styles = {"observe": "", "knowledge": " [arrowhead=none]", "code": ' [style=bold, label="code → t"]'}
    for a, b, kind in graph.edges(data="kind"):
        out.append(f"  {_quote(a)} -> {_quote(b)}{styles[kind]};")
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
        layers[2 + 2 * depth[name]] += [f"{name}/{k}" for k in spec.stage(name).knowledge_names]
    return [layer for layer in layers if layer]


def draw(spec: GraphSpec, report: dict[str, Any] | None = None):
    """The knowledge graph drawn on a matplotlib :class:`~matplotlib.figure.Figure` (Agg, no pyplot).

    Nodes are placed in layers (see :func:`_layout`), each ordered by the mean
    position of its nodes' predecessors; the phase table is the caption.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    graph = knowledge_graph(spec, report)
    layers = _layout(spec, graph)
    labels = nx.get_node_attributes(graph, "label")
    char = _FONT * 0.6 / 72  # inches per character
    x: dict[str, float] = {}  # inches, centred on 0
    for layer in layers:
        slot = max(len(line) for n in layer for line in labels[n].split("\n")) * char + 0.4
        centre = {n: sum(x[p] for p in graph.predecessors(n)) / max(1, graph.in_degree(n)) for n in layer}
        layer.sort(key=lambda n: centre[n])
        mid = sum(centre.values()) / len(layer)
        for i, node in enumerate(layer):
            x[node] = mid + slot * (i - (len(layer) - 1) / 2)
    heights = [max(labels[n].count("\n") + 1 for n in layer) * _FONT * 1.35 / 72 + 0.55 for layer in layers]
    caption = _caption(spec, report)
    span = max(x.values()) - min(x.values()) + 2 * max(len(line) for text in labels.values()
                                                       for line in text.split("\n")) * char
    width = max(6.0, span + 0.6, max(map(len, caption)) * char + 0.6)
    height = sum(heights) + len(caption) * _FONT * 1.5 / 72 + 0.5
    shift = width / 2 - (min(x.values()) + max(x.values())) / 2
    points = {n: (shift + x[n], height - 0.25 - sum(heights[:i]) - heights[i] / 2)
              for i, layer in enumerate(layers) for n in layer}

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    boxes = {"data": "round4,pad=0.4", "stage": "square,pad=0.4", "knowledge": "round,pad=0.4"}
    texts = {n: ax.text(*points[n], labels[n], ha="center", va="center", fontsize=_FONT, zorder=3,
                        bbox=dict(boxstyle=boxes[graph.nodes[n]["kind"]], fc=_COLOURS[graph.nodes[n]["kind"]],
                                  ec="#555555"))
             for n in graph}
    fig.canvas.draw()  # places the boxes, so arrows can stop at their edges
    for a, b, kind in graph.edges(data="kind"):
        style = dict(arrowstyle="-" if kind == "knowledge" else "-|>", color="#333333",
                     lw=1.8 if kind == "code" else 0.9, patchA=texts[a].get_bbox_patch(),
                     patchB=texts[b].get_bbox_patch(), shrinkA=2, shrinkB=2)
        ax.annotate("", xy=points[b], xytext=points[a], arrowprops=style, zorder=2)
        if kind == "code":
            (xa, ya), (xb, yb) = points[a], points[b]
            ax.text((xa + xb) / 2 + 0.05, (ya + yb) / 2, "code → t", fontsize=_FONT - 1, style="italic",
                    zorder=4)
    ax.text(0.3, 0.25, "\n".join(caption), ha="left", va="bottom", fontsize=_FONT, family="monospace")
    return fig


def write_graph(spec: GraphSpec, output: str | os.PathLike, report: dict[str, Any] | None = None) -> Path:
    """Writes the knowledge graph to ``output`` (``.dot`` text, ``.png`` or ``.svg``), atomically.

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
        return atomic_write(output, lambda tmp: Path(tmp).write_text(to_dot(spec, report)))
    figure = draw(spec, report)
    return atomic_write(output, lambda tmp: figure.savefig(tmp, format=suffix[1:]))
