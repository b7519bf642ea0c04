"""Residual blocks in an exported graph, found through module scopes and data flow (not node names).

A *block* is a child of a ModuleList (`layers.3`, `blocks.3`, `model.layers.3`,
`encoder.layer.3`). A *residual branch* inside it is an `Add(stream, branch)` whose `stream`
feeds, through matrix products, the value `branch`: `stream + F(LN(stream))` in a pre-norm
block (LLaMA, OPT, ViT), `LN(stream + F(stream))` in a post-norm one (BERT), where the Add sits
before the LayerNorm. A branch is *attention* when it holds a Softmax (or a fused attention
op), else *mlp*. Its site, the key plans use, is the block's child that computes the branch
value (`layers.3.self_attn`, `layers.3.mlp`; `layers.3.fc2` in OPT, whose block holds its MLP's
linears itself; `encoder.layer.3.attention`, `encoder.layer.3.output` in BERT); its
`output_module` is the innermost module that does (`layers.3.self_attn.o_proj`), the module a
torch counterpart zeroes to drop it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from mlpdeploy.passes.matching.core import is_constant
from mlpdeploy.scopes import OUTPUT_MODULE_KEY, inherited_scopes, natural_key

ATTENTION_OPS = frozenset({"Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention"})
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast"})  # f(0) = 0
# Ops that compute with weights: a branch must hold one. mlpdeploy's KAN ops (BSplineKAN, FANLayer) and
# SparseMLP hold their layer's matrix products, so a residual stack of them has branches too (found by
# fuzzing: drop-layers after sparse-mlp found no MLP left to drop).
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "MatMulNBits", "GatedMLP", "SparseMLP", "W4A16MatMul", "BSplineKAN", "FANLayer", *ATTENTION_OPS})


@dataclass(eq=False)
class Branch:
    """One residual branch: `add = stream + branch`, `nodes` computing `branch` from `stream`."""

    site: str
    kind: str  # "attention" | "mlp"
    block: str
    output_module: str
    add: ir.Node
    stream: ir.Value
    branch: ir.Value
    nodes: set[ir.Node]


@dataclass(eq=False)
class Block:
    """A block's residual branches in graph order, the stream entering it and the value leaving it."""

    path: str
    branches: list[Branch] = field(default_factory=list)
    nodes: set[ir.Node] = field(default_factory=set)
    exit: ir.Value | None = None
    exit_problem: str | None = None  # why no single exit value was found

    @property
    def entry(self) -> ir.Value:
        return self.branches[0].stream


def block_of(scopes: list[str]) -> str | None:
    """The innermost ModuleList child among a node's scopes (`layers.3` in `layers.3.mlp.up`)."""
    for scope in reversed(scopes):
        if scope.rsplit(".", 1)[-1].isdigit():
            return scope
    return None


def find_blocks(graph: ir.Graph) -> list[Block]:
    """Every block that holds at least one residual branch, in model order."""
    scopes = inherited_scopes(graph)
    blocks: dict[str, Block] = {}
    for node, node_scopes in scopes.items():
        path = block_of(node_scopes)
        if path is not None:
            blocks.setdefault(path, Block(path)).nodes.add(node)
    for node in graph:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        path = block_of(scopes[node])
        if path is None:
            continue
        branch = _residual(node, blocks[path], scopes)
        if branch is not None:
            blocks[path].branches.append(branch)
    found = []
    for block in blocks.values():
        inner = {b.add for outer in block.branches for b in block.branches if b is not outer and b.add in outer.nodes}
        block.branches = [b for b in block.branches if b.add not in inner]
        if block.branches:
            block.exit, block.exit_problem = _exit(graph, block)
            found.append(block)
    return sorted(found, key=lambda b: natural_key(b.path))


def _residual(add: ir.Node, block: Block, scopes: dict[ir.Node, list[str]]) -> Branch | None:
    a, b = add.inputs
    if a is None or b is None or is_constant(a) or is_constant(b):
        return None
    for stream, branch in ((a, b), (b, a)):
        nodes = _between(stream, branch, block.nodes)
        if nodes and any(n.op_type in COMPUTE_OPS for n in nodes):
            kind = "attention" if any(n.op_type in ATTENTION_OPS for n in nodes) else "mlp"
            producer_scopes = _computing_scopes(branch, block.path, scopes)
            if producer_scopes is None:
                return None
            site = producer_scopes[producer_scopes.index(block.path) + 1]
            return Branch(site, kind, block.path, producer_scopes[-1], add, stream, branch, nodes)
    return None


def _computing_scopes(branch: ir.Value, block: str, scopes: dict[ir.Node, list[str]]) -> list[str] | None:
    """The scopes of the node computing `branch` inside one of the block's children, looking
    through layout ops the block applies itself (Mixer's token MLP is transposed back in its
    block); None when the block computes it some other way."""
    node = branch.producer()
    while node is not None and scopes.get(node, [])[-1:] == [block] and node.op_type in LAYOUT_OPS:
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    node_scopes = scopes.get(node, []) if node is not None else []
    output_module = node.metadata_props.get(OUTPUT_MODULE_KEY, "") if node is not None else ""
    if node_scopes[-1:] == [block] and output_module.startswith(block + "."):
        return [*node_scopes, output_module]  # a fused MLP (sparse-mlp on OPT) in the block's own scope
    if block not in node_scopes or node_scopes[-1] == block:
        return None
    return node_scopes


def _between(stream: ir.Value, branch: ir.Value, region: set[ir.Node]) -> set[ir.Node]:
    """The nodes of `region` on a path from `stream` to `branch` (empty when there is none)."""
    ancestors: set[ir.Node] = set()
    work = [branch.producer()]
    while work:  # every ancestor of `branch` inside the region, not looking past `stream`
        node = work.pop()
        if node is None or node in ancestors or node not in region:
            continue
        ancestors.add(node)
        work.extend(v.producer() for v in node.inputs if v is not None and v is not stream)
    between: set[ir.Node] = set()
    work = [use.node for use in stream.uses()]
    while work:  # those that read `stream`, directly or through each other
        node = work.pop()
        if node in between or node not in ancestors:
            continue
        between.add(node)
        work.extend(use.node for out in node.outputs for use in out.uses())
    return between


def _exit(graph: ir.Graph, block: Block) -> tuple[ir.Value | None, str | None]:
    """The value that carries the stream out of the block: computed from the last residual Add
    (itself, or after a post-norm LayerNorm) and read outside the block or a graph output."""
    last = block.branches[-1].add.outputs[0]
    leaving, seen, work = [], set(), [last]
    while work:
        value = work.pop()
        if value in seen:
            continue
        seen.add(value)
        users = [use.node for use in value.uses()]
        if value.is_graph_output() or any(u not in block.nodes for u in users):
            leaving.append(value)
        work.extend(out for u in users if u in block.nodes for out in u.outputs)
    if len(leaving) == 1:
        return leaving[0], None
    return None, f"{len(leaving)} values computed from its last residual add leave the block"
