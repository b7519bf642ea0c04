"""GatedMLP as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `GatedMLP` node that carries `plugin_namespace="mlpdeploy"` to this
plugin and hands it the node's `activation` attribute as a CHAR field. Inputs arrive in the
node's order: x [..., d], W_gate_up [d, 2h], W_down [h, d_out], [b_gate_up [2h], [b_down]].
`enqueue` wraps TensorRT's device pointers as torch tensors on TensorRT's stream, launches
the fused Triton gate-up kernel into the workspace (H [M, h]) and a cuBLAS GEMM into the
output. The rules (fields, shapes, dtypes, formats, workspace, which biases) are plain
functions below, tested without TensorRT; `make_creator(trt)` binds the classes to a module.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mlpdeploy.errors import OpError

from .. import trt_plugin_base
from .reference import ACTIVATIONS

PLUGIN_NAME = "GatedMLP"
FIELD_TYPES = {"activation": "CHAR"}
SUPPORTED_TYPES = ("FLOAT", "HALF", "BF16")
WORKSPACE_ALIGN = 256


# ---- rules, without TensorRT ------------------------------------------------------------


def decode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Plugin fields (as TensorRT hands them) → constructor kwargs; the activation is checked."""
    if "activation" not in fields:
        raise OpError("GatedMLP plugin needs the 'activation' field (the node's activation attribute)")
    activation = trt_plugin_base.decode_string(fields["activation"])
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown GatedMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    return {"activation": activation}


def output_dims(x_dims: Sequence, w_down_dims: Sequence) -> list:
    """Output shape: x's dims with the last replaced by W_down's last (works on ints or dim expressions)."""
    if len(w_down_dims) != 2:
        raise OpError(f"W_down must be 2-D [h, d_out], got {len(w_down_dims)} dims")
    return [*list(x_dims)[:-1], w_down_dims[1]]


def output_types(input_types: Sequence) -> list:
    """The output has x's dtype."""
    return [input_types[0]]


def supports_combination(pos: int, types: Sequence[str], linear: Sequence[bool]) -> bool:
    """Whether in/out position `pos` may take `types[pos]` (TensorRT DataType names) and its format.

    Every tensor is LINEAR (row-major). x is FLOAT, HALF or BF16; every other tensor — weights,
    biases, output — has x's type (one kernel instantiation per dtype).
    """
    if not linear[pos]:
        return False
    if pos == 0:
        return types[0] in SUPPORTED_TYPES
    return types[pos] == types[0]


def bias_slots(num_inputs: int, w_gate_up_dims: Sequence[int], w_down_dims: Sequence[int],
               bias_dims: Sequence[Sequence[int]]) -> tuple[int | None, int | None]:
    """Input indices of (b_gate_up, b_down), None when absent, with their lengths checked.

    GatedMLP nodes have no empty input slots (a lone b_down comes with a zero b_gate_up), so
    3 inputs mean no bias, 4 mean b_gate_up [2h], 5 mean b_gate_up [2h] and b_down [d_out].
    """
    if not 3 <= num_inputs <= 5:
        raise OpError(f"GatedMLP plugin takes 3 to 5 inputs, got {num_inputs}")
    want = [int(w_gate_up_dims[1]), int(w_down_dims[1])][: num_inputs - 3]
    for name, n, dims in zip(("b_gate_up", "b_down"), want, bias_dims):
        if len(dims) != 1 or int(dims[0]) != n:
            raise OpError(f"GatedMLP {name} must have shape ({n},), got {tuple(int(v) for v in dims)}")
    return (3 if num_inputs > 3 else None), (4 if num_inputs > 4 else None)


def workspace_bytes(x_max_dims: Sequence[int], w_down_dims: Sequence[int], type_name: str) -> int:
    """Scratch for H [M, h] at the largest M the profile allows, rounded up to WORKSPACE_ALIGN."""
    m = trt_plugin_base.volume(list(x_max_dims)[:-1])
    size = m * int(w_down_dims[0]) * trt_plugin_base.ITEMSIZE[type_name]
    return -(-size // WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def run(x, w_gate_up, w_down, b_gate_up, b_down, activation: str, out, workspace) -> None:
    """The plugin's computation on torch tensors: H into `workspace` (flat), then H·W_down (+b) into `out`."""
    import torch

    from .kernel import gate_up_act

    d = x.shape[-1]
    x2d = x.reshape(-1, d)
    m, h = x2d.shape[0], w_down.shape[0]
    hidden = workspace[: m * h].view(m, h)
    gate_up_act(x2d, w_gate_up, b_gate_up, activation, out=hidden)
    out2d = out.view(m, w_down.shape[1])
    if b_down is not None:
        torch.addmm(b_down, hidden, w_down, out=out2d)
    else:
        torch.mm(hidden, w_down, out=out2d)


# ---- TensorRT classes -------------------------------------------------------------------


@functools.cache
def plugin_class(trt) -> type:
    """The GatedMLP IPluginV3 class bound to TensorRT module `trt`."""
    base = trt_plugin_base.plugin_base(trt)

    class GatedMLPPlugin(base):
        PLUGIN_NAME = PLUGIN_NAME

        def __init__(self, activation: str = "silu", phase=None):
            super().__init__(phase)
            self.activation = decode_fields({"activation": activation})["activation"]

        def fields(self):
            return {"activation": self.activation}

        def get_output_data_types(self, input_types):
            return output_types(input_types)

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            dims = trt.DimsExprs(inputs[0])
            dims[len(dims) - 1] = output_dims(list(inputs[0]), list(inputs[2]))[-1]
            return [dims]

        def supports_format_combination(self, pos, in_out, num_inputs):
            descs = [d.desc for d in in_out[: pos + 1]]
            return supports_combination(
                pos,
                [trt_plugin_base.dtype_name(d.type) for d in descs],
                [d.format == trt.TensorFormat.LINEAR for d in descs],
            )

        def get_workspace_size(self, inputs, outputs):
            return workspace_bytes(tuple(inputs[0].max), tuple(inputs[2].max), trt_plugin_base.dtype_name(inputs[0].desc.type))

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            import torch

            dtype = trt_plugin_base.TORCH_DTYPES[trt_plugin_base.dtype_name(input_desc[0].type)]
            dims = [tuple(d.dims) for d in input_desc]
            tensors = [trt_plugin_base.device_tensor(p, s, dtype) for p, s in zip(inputs, dims)]
            i_bgu, i_bd = bias_slots(len(inputs), dims[1], dims[2], dims[3:])
            out = trt_plugin_base.device_tensor(outputs[0], tuple(output_desc[0].dims), dtype)
            m = trt_plugin_base.volume(dims[0][:-1])
            scratch = trt_plugin_base.device_tensor(workspace, (m * dims[2][0],), dtype)
            with torch.cuda.stream(torch.cuda.ExternalStream(int(stream))):
                run(
                    tensors[0], tensors[1], tensors[2],
                    None if i_bgu is None else tensors[i_bgu],
                    None if i_bd is None else tensors[i_bd],
                    self.activation, out, scratch,
                )
            return 0

    return GatedMLPPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for GatedMLP (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
