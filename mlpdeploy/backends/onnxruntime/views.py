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

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from mlpdeploy.onnx_io import write_onnx


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
    """In the model ONNX Runtime saved at `saved`, replace each folded view that sits beside its
    source initializer by the Reshape again; returns the views restored. Weights in an external
    data file are rewritten into a new one without the folded copies (streamed, not loaded)."""
    if not views:
        return []
    model = ir.load(saved)  # external weights stay memory-mapped until written
    graph = model.graph
    restored = []
    for view, (source, shape) in views.items():
        folded, original = graph.initializers.get(view), graph.initializers.get(source)
        if folded is None or original is None or folded.is_graph_output():
            continue
        graph.initializers.pop(view)
        shape_value = ir.Value(name=f"{view}.view_shape", const_value=ir.tensor(np.asarray(shape, np.int64), name=f"{view}.view_shape"))
        graph.register_initializer(shape_value)
        reshape = ir.node("Reshape", [original, shape_value], name=f"{view}/view")
        graph.insert_before(graph[0], reshape)
        folded.name = None
        ir.convenience.replace_all_uses_with(folded, reshape.outputs[0])
        reshape.outputs[0].name = view
        restored.append(view)
    if restored:
        with tempfile.TemporaryDirectory(dir=saved.parent, prefix=".views.") as folder:
            rewritten = Path(folder) / saved.name
            write_onnx(model, rewritten)  # past the threshold, weights to `<name>.data` again
            del model, graph
            data = saved.with_name(saved.name + ".data")
            if (rewritten.parent / data.name).exists():
                os.replace(rewritten.parent / data.name, data)
            elif data.exists():
                data.unlink()
            os.replace(rewritten, saved)
    return restored
