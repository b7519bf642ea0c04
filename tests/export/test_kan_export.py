"""KAN layers exported from torch: one `mlpdeploy::` node per layer (torch.library custom ops with
onnxscript translations), function bodies attached, weights folded and named, numerics equal to
torch; the custom ops train (autograd through the reference)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.errors import OpError
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.plugins.torch_export import attach_functions, translation_table
from mlpdeploy.zoo.kan_layers import FANLayer, GroupRational, KANLinear

# model -> (op type, layers calling it)
EXPECTED = {"kat-tiny": ("GroupRational", 4), "kan-tiny": ("BSplineKAN", 2), "fan-tiny": ("FANLayer", 2)}


@pytest.mark.parametrize("name", EXPECTED)
def test_zoo_model_exports_one_node_per_layer(name, tmp_path):
    bundle = load_model(name)
    exported = export_model(bundle, tmp_path / "m.onnx")
    proto = onnx.load(exported.model_path)
    onnx.checker.check_model(proto, full_check=True)
    model = ir.from_proto(proto)
    op_type, layers = EXPECTED[name]
    nodes = [n for n in model.graph if n.domain == "mlpdeploy"]
    assert [n.op_type for n in nodes] == [op_type] * layers
    assert {k[1] for k in model.functions} == {op_type} and model.opset_imports["mlpdeploy"] == 1
    assert all(n.attributes["plugin_namespace"].value == "mlpdeploy" for n in nodes)
    for node in nodes:  # every weight input is a named initializer of the layer's module
        scope = dict(node.metadata_props)["pkg.torch.onnx.name_scopes"]
        for value in node.inputs[1:]:
            assert value.is_initializer() and "." in value.name, (value.name, scope)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
    with torch.no_grad():
        expect = bundle.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)


def test_large_kan_weights_are_folded(tmp_path):
    """A KANLinear above the exporter's 8192-element folding limit still exports its weights as initializers."""
    from mlpdeploy.model.bundle import InputSpec, ModelBundle

    model = torch.nn.Sequential(collections.OrderedDict(kan=KANLinear(96, 64))).eval()  # spline weight 96·8·64 = 49152 elements
    bundle = ModelBundle(module=model, example_inputs={"x": torch.randn(2, 96)}, inputs=[InputSpec("x", "float32", ["batch", 96], [2, 96])],
                         output_names=["y"], source="test", kind="test")
    exported = ir.load(str(export_model(bundle, tmp_path / "k.onnx").model_path))
    assert collections.Counter(n.op_type for n in exported.graph) == {"BSplineKAN": 1}
    node = next(iter(exported.graph))
    assert [(v.name, v.is_initializer()) for v in node.inputs[1:]] == [(f"kan.{n}", True) for n in ("grid", "base_weight", "spline_weight")]


@pytest.mark.parametrize("layer", [
    GroupRational(groups=4, init="gelu", form="B"),
    KANLinear(6, 5, grid_size=3),
    FANLayer(6, 10, activation="silu", use_p_bias=False),
], ids=["GroupRational", "KANLinear", "FANLayer"])
def test_custom_ops_backpropagate_like_their_reference(layer):
    """Gradients through the custom op (recomputed reference) equal gradients of the reference itself."""
    from mlpdeploy.plugins.bspline_kan.reference import bspline_kan
    from mlpdeploy.plugins.fan_layer.reference import fan_layer
    from mlpdeploy.plugins.group_rational.reference import group_rational

    x = torch.randn(3, 8 if isinstance(layer, GroupRational) else 6, requires_grad=True)
    layer(x).square().sum().backward()
    got = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    x.grad = None
    layer.zero_grad()
    if isinstance(layer, GroupRational):
        out = group_rational(x, layer.numerator, layer.denominator, layer.form)
    elif isinstance(layer, KANLinear):
        out = bspline_kan(x, layer.grid, *layer.op_weights())
    else:
        p, g = layer.input_linear_p, layer.input_linear_g
        out = fan_layer(x, p.weight.t(), g.weight.t(), torch.zeros(p.out_features), g.bias, layer.activation)
    out.square().sum().backward()
    want = [x.grad, *(p.grad for p in layer.parameters())]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_translation_table_covers_every_exportable_op():
    assert {str(k) for k in translation_table()} == {"mlpdeploy.group_rational.default", "mlpdeploy.bspline_kan.default", "mlpdeploy.fan_layer.default"}


def test_unknown_mlpdeploy_node_is_refused():
    x = ir.Value(name="x", shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.Node("mlpdeploy", "Mystery", [x])
    model = ir.Model(ir.Graph([x], node.outputs, nodes=[node]), ir_version=10)
    with pytest.raises(OpError, match="unknown mlpdeploy::Mystery node; known ops are GatedMLP, GroupRational"):
        attach_functions(model)
