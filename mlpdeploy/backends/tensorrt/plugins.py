"""Plugin registration for datacenter TensorRT: its own plugins, every mlpdeploy op's plugin creator
(`mlpdeploy.plugins.trt_register`), and any other plugin libraries. Done before a build parses a graph
in plugin form and before an engine holding plugin layers is deserialized. (TensorRT-RTX has no
plugin layer: its graphs are put in function-body form instead, `plugins.forms`.)"""

from __future__ import annotations

from mlpdeploy.backends.tensorrt import log as trt_log
from mlpdeploy.errors import MlpdeployError


def register_plugins(trt, libraries: list[str] | None = None) -> list[str]:
    """TensorRT's own plugins, every mlpdeploy plugin, and `libraries`; returns the mlpdeploy ops registered."""
    from mlpdeploy.plugins.trt_register import register_plugins as register_mlpdeploy

    trt.init_libnvinfer_plugins(trt_log.logger_for(trt), "")
    registry = trt.get_plugin_registry()
    for library in libraries or []:
        if registry.load_library(str(library)) is None:
            raise MlpdeployError(f"TensorRT could not load plugin library {library}; check the path and its TensorRT version")
    return register_mlpdeploy(trt)
