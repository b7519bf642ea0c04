"""Register every mlpdeploy op's TensorRT plugin creator, from one place."""

from __future__ import annotations

from mlpdeploy.contract import PLUGIN_NAMESPACE

from . import trt_plugin_base
from .registry import OPS

# Creators must outlive the registry's use of them: TensorRT keeps only a raw pointer.
_REGISTERED: dict[tuple[int, str], object] = {}


def creators(trt=None) -> dict[str, object]:
    """One IPluginCreatorV3One per op in plugins.registry.OPS, keyed by op type."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return {op_type: op.face("trt_plugin").make_creator(trt) for op_type, op in OPS.items()}


def register_plugins(trt=None) -> list[str]:
    """Register every op's creator under namespace "mlpdeploy" (once per registry); returns the op types."""
    trt = trt or trt_plugin_base.import_tensorrt()
    registry = trt.get_plugin_registry()
    done = []
    for op_type, creator in creators(trt).items():
        key = (id(registry), op_type)
        if key not in _REGISTERED:
            if not registry.register_creator(creator, PLUGIN_NAMESPACE):
                raise RuntimeError(f"TensorRT refused to register the {op_type} plugin creator in namespace {PLUGIN_NAMESPACE!r}")
            _REGISTERED[key] = creator
        done.append(op_type)
    return done
