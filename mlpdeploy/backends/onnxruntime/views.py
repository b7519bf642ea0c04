"""Keep one copy of an initializer that a graph reads both directly and through a Reshape.

`quantize-embedding` lets a token embedding read a tied lm_head's 4-bit codes: MatMulNBits takes
them as [V, D/B, B/2], GatherBlockQuantized through `Reshape(codes, [V, D/2])`. When ONNX Runtime
saves an optimized model it constant-folds that Reshape into an initializer of its own, written
beside the original: a second copy on disk (14 MB for SmolLM2). `shared_views` lists such
Reshapes before the build; `restore_views` turns the folded copies in the saved model back into
the Reshapes (ONNX Runtime folds them again in memory when it loads the model, where a copy costs
only memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def shared_views(model_path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Reshape output → (initializer it reshapes, target shape), for Reshapes of an initializer that
    another node reads too (the shape itself a constant initializer)."""
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    views = {}
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        data, shape = node.input[0], node.input[1]
        if data in initializers and shape in initializers and readers.get(data, 0) > 1:
            shape_tensor = initializers[shape]
            if shape_tensor.data_location != onnx.TensorProto.EXTERNAL:
                views[node.output[0]] = (data, numpy_helper.to_array(shape_tensor))
    return views


def restore_views(saved: Path, views: dict[str, tuple[str, np.ndarray]]) -> list[str]:
    """In the model ONNX Runtime saved at `saved` (weights inside the file), replace each folded
    view that sits beside its source initializer by the Reshape again; returns the views restored."""
    if not views:
        return []
    model = onnx.load(str(saved), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        return []  # a model past 2 GB keeps its weights in a .data file that this does not rewrite
    restored, nodes = [], []
    for view, (source, shape) in views.items():
        if view not in initializers or source not in initializers:
            continue
        graph.initializer.remove(initializers[view])
        shape_name = f"{view}.view_shape"
        graph.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), shape_name))
        nodes.append(onnx.helper.make_node("Reshape", [source, shape_name], [view], name=f"{view}/view"))
        restored.append(view)
    if restored:
        for node in reversed(nodes):
            graph.node.insert(0, node)
        onnx.save(model, str(saved))
    return restored
