"""drop-layers: remove residual sublayers (attention, MLP) or whole blocks, routing the stream
past them (LLM-Drop, "What Matters in Transformers? Not All Attention is Needed").

Sublayers and blocks are found through module scopes and data flow (`matching/residual.py`),
never node names. Dropping a sublayer replaces its residual `Add(stream, branch)` by `stream`
(pre-norm: `x + F(LN(x))` becomes `x`; post-norm BERT: `LN(x + F(x))` becomes `LN(x)`, the
LayerNorm stays); dropping a block replaces the value leaving it by the value entering it. What
the dropped part alone computed goes: nodes, shape ops, initializers. A dropped attention layer
of a KV-cache graph takes its cache with it: its `past_key_values.{i}.key|value` inputs and
`present.{i}.key|value` outputs leave the interface (`PassReport.removed_inputs/_outputs`, which
`rewrite_model` applies to the derived manifest: `cache.layers` keeps the other layers). Other
inputs stay even when nothing reads them any more (attention_mask once every attention layer is
gone): they are the model's contract with its callers.

Which parts: from a plan, exactly its sites (chosen by measured score: `analyze --redundancy`);
else `scopes=A+B` (sites such as `layers.3.self_attn` or blocks such as `layers.3`, joined by
`+`) and/or counts: `attention=N`, `mlp=N`, `blocks=N` take the N deepest of each (no scores
here; LLM-Drop found the deepest attention layers the most redundant). No options: the identity.
"""

from __future__ import annotations

import onnx_ir as ir

from mlpdeploy.contract import CACHE_INPUT, CACHE_OUTPUT
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.overrides import IDENTITY, ZERO
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import MatchFailure, check, remove_dead
from mlpdeploy.passes.matching.residual import Block, Branch, find_blocks
from mlpdeploy.passes.options import Option
from mlpdeploy.scopes import natural_key

COUNTS = {"attention": "attention", "mlp": "mlp", "blocks": "block"}  # option -> kind


class DropLayers(RewritePass):
    """Drop residual attention/MLP sublayers or whole blocks; the stream passes straight through."""

    name = "drop-layers"
    description = "remove attention/MLP sublayers or whole blocks (LLM-Drop): attention=N, mlp=N, blocks=N (deepest), scopes=A+B, or a plan's sites"
    options = {
        "attention": Option(0, "drop the N deepest attention sublayers", minimum=0),
        "mlp": Option(0, "drop the N deepest MLP sublayers", minimum=0),
        "blocks": Option(0, "drop the N deepest whole blocks", minimum=0),
        "scopes": Option("", "drop these sites (module paths joined by +, e.g. layers.3.mlp+layers.5)"),
    }
    reference = ("edited: a dropped sublayer's module gives zeros, a dropped block gives back its input (recorded in the "
                 "manifest as module_overrides, which validation applies)")

    def rewrite(self, model: ir.Model) -> PassReport:
        graph = model.graph
        report = PassReport(self.name, details={"dropped": {}})
        blocks = find_blocks(graph)
        for site, target in self._targets(blocks, report).items():
            try:
                outputs = _drop(graph, target)
            except MatchFailure as failure:
                report.skipped[site] = failure.reason
                continue
            report.rewritten += 1
            report.removed_outputs.extend(outputs)
            layers = sorted({int(CACHE_OUTPUT.fullmatch(o).group(1)) for o in outputs})
            report.details["dropped"][site] = {"kind": _kind(target), "block": _block_path(target),
                                               "output_module": _output_module(target), "cache_layers": layers}
            report.module_overrides[_output_module(target)] = ZERO if isinstance(target, Branch) else IDENTITY
        dropped_layers = {layer for d in report.details["dropped"].values() for layer in d["cache_layers"]}
        for value in list(graph.inputs):
            match = CACHE_INPUT.fullmatch(value.name or "")
            if match and int(match.group(1)) in dropped_layers:
                _read_dims_elsewhere(graph, value)
                graph.inputs.remove(value)
                report.removed_inputs.append(value.name)
        return report

    def _targets(self, blocks: list[Block], report: PassReport) -> dict[str, Block | Branch]:
        """Site → what to drop: a plan's sites, else `scopes=` and the counts. A block named beside
        one of its sublayers wins (the sublayer is skipped, with the reason)."""
        known: dict[str, Block | Branch] = {b.path: b for b in blocks}
        known.update({br.site: br for b in blocks for br in b.branches})
        if self.sites is not None:
            wanted = list(self.sites)
            counts_given = [k for k in COUNTS if self.config[k]] + (["scopes"] if self.config["scopes"] else [])
            if counts_given:
                raise MlpdeployError(f"drop-layers from a plan takes the plan's sites; drop the {', '.join(counts_given)} option(s)")
        else:
            wanted = [s.strip() for s in self.config["scopes"].split("+") if s.strip()]
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise MlpdeployError(
                f"drop-layers: {unknown[0]!r} is no residual sublayer or block of this graph; "
                f"its sites are: {', '.join(known) or 'none (no residual blocks found)'}"
            )
        chosen = {s: known[s] for s in wanted}
        for option, kind in COUNTS.items():
            chosen.update(_deepest(blocks, kind, self.config[option], option, chosen))
        dropped_blocks = {t.path for t in chosen.values() if isinstance(t, Block)}
        for site, target in list(chosen.items()):
            if isinstance(target, Branch) and target.block in dropped_blocks:
                report.skipped[site] = f"its block {target.block} is dropped as a whole"
                del chosen[site]
        return chosen


def _deepest(blocks: list[Block], kind: str, n: int, option: str, chosen: dict) -> dict[str, Block | Branch]:
    """The `n` deepest candidates of `kind` not chosen yet (nor inside a chosen block)."""
    if n == 0:
        return {}
    taken = {t.path for t in chosen.values() if isinstance(t, Block)} | set(chosen)
    pool: dict[str, Block | Branch] = {
        b.path: b for b in blocks if kind == "block" and b.path not in taken
    } | {br.site: br for b in blocks for br in b.branches if br.kind == kind and br.site not in taken and b.path not in taken}
    if n > len(pool):
        raise MlpdeployError(
            f"drop-layers: {option}={n}, but the graph has {len(pool)} {kind} site(s) left to drop"
            f"{': ' + ', '.join(pool) if pool else ''}"
        )
    return dict(sorted(pool.items(), key=lambda kv: natural_key(kv[0]))[-n:])


def _drop(graph: ir.Graph, target: Block | Branch) -> list[str]:
    """Route the stream past `target` and remove what only it computed; returns the cache outputs removed."""
    if isinstance(target, Branch):
        add = target.add
        check(add.graph is graph and target.branch in add.inputs, "its residual add was rewritten by an earlier drop")
        stream = add.inputs[0] if add.inputs[1] is target.branch else add.inputs[1]  # live: an earlier drop may have moved it
        region, old = target.nodes, add.outputs[0]
    else:
        check(target.exit is not None, target.exit_problem or "no value leaves the block")
        first = target.branches[0]
        stream = first.add.inputs[0] if first.add.inputs[1] is first.branch else first.add.inputs[1]
        check(stream.producer() not in target.nodes, "the stream entering its first residual branch is computed inside the block")
        region, old = target.nodes, target.exit
    produced = [v for node in region for v in node.outputs if v.is_graph_output() and v is not old]  # `old` is bypassed
    others = [v.name for v in produced if not CACHE_OUTPUT.fullmatch(v.name or "")]
    check(not others, f"it computes graph output(s) {', '.join(map(repr, others))}, which are not a KV cache")
    for value in produced:
        graph.outputs.remove(value)
    _bypass(graph, old, stream)
    remove_dead(graph, [old, *produced])
    return sorted((v.name for v in produced), key=natural_key)


def _bypass(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Every reader of `old` reads `new`; a graph output `old` becomes Identity(new) under its name."""
    if old.is_graph_output():
        name, old.name = old.name, None
        identity = ir.node("Identity", [new], name=f"{name}_bypass")
        out = identity.outputs[0]
        out.name, out.type, out.shape = name, old.type, old.shape
        graph.append(identity)
        graph.outputs[graph.outputs.index(old)] = out
    ir.convenience.replace_all_uses_with(old, new)


def _kind(target: Block | Branch) -> str:
    return target.kind if isinstance(target, Branch) else "block"


def _block_path(target: Block | Branch) -> str:
    return target.block if isinstance(target, Branch) else target.path


def _output_module(target: Block | Branch) -> str:
    return target.output_module if isinstance(target, Branch) else target.path


def _read_dims_elsewhere(graph: ir.Graph, value: ir.Value) -> None:
    """Make the `Shape` nodes that still read a dropped cache input (the exporter takes the batch
    and past sizes from whichever input carries them) read a cache input that stays."""
    readers = [use.node for use in value.uses()]
    if not readers:
        return
    same = [v for v in graph.inputs if v is not value and CACHE_INPUT.fullmatch(v.name or "") and v.uses() and str(v.shape) == str(value.shape)]
    others = [r for r in readers if r.op_type != "Shape"]
    if others or not same:
        reader = (others or readers)[0]
        raise MlpdeployError(
            f"drop-layers: the dropped cache input {value.name} is still read by {reader.op_type} {reader.name!r}"
            + ("" if others else " and no cache input with its shape stays to read instead")
        )
    for reader in readers:
        reader.replace_input_with(0, same[0])
