"""Plugin library completeness: every registered op has all four faces, each defining its contract."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mlpdeploy.plugins import registry
from mlpdeploy.plugins.registry import FACES, OPS

PLUGINS = Path(registry.__file__).resolve().parent

# What each face module must define, for an op in folder F with op type T.
CONTRACT = {
    "reference": lambda op: [op.folder],  # the torch function, named after the folder
    "onnx_function": lambda op: ["OP_TYPE", "ensure_function", "make_model"],
    "kernel": lambda op: [f"{op.folder}_triton"],  # the launcher on torch tensors
    "trt_plugin": lambda op: ["PLUGIN_NAME", "make_creator", "plugin_class"],
}


def test_ops_are_listed():
    assert "GatedMLP" in OPS
    for op_type, op in OPS.items():
        assert op.op_type == op_type
        assert (PLUGINS / op.folder / "__init__.py").is_file()


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("op_type", sorted(OPS))
def test_face_defines_its_contract(op_type, face):
    op = OPS[op_type]
    assert (PLUGINS / op.folder / f"{face}.py").is_file()
    module = op.face(face)  # importable without triton or tensorrt
    for name in CONTRACT[face](op):
        assert hasattr(module, name), f"{op.folder}/{face}.py must define {name}"
    if face == "reference":
        assert callable(getattr(module, op.folder))
    if face == "onnx_function":
        assert module.OP_TYPE == op_type
        assert inspect.signature(module.ensure_function).parameters.keys() == {"model", "node"}
    if face == "trt_plugin":
        assert module.PLUGIN_NAME == op_type


def test_unknown_face():
    with pytest.raises(KeyError, match="faces are"):
        OPS["GatedMLP"].face("cuda")


def test_registered_ops_have_model_local_functions():
    """Every op's standalone model is valid ONNX and runs in ONNX Runtime."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    for op in OPS.values():
        model = op.face("onnx_function").make_model(8, 8)
        proto = ir.to_proto(model)
        onnx.checker.check_model(proto, full_check=True)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.ones([d if isinstance(d, int) else 2 for d in i.shape], np.float32) for i in sess.get_inputs()}
        assert all(np.isfinite(o).all() for o in sess.run(None, feeds))
