"""Backends `tensorrt` (datacenter TensorRT, `datacenter`) and `tensorrt-rtx` (TensorRT for RTX, `rtx`),
and what they share: the parse + build driver and artifacts (`build`), build-log reading (`log`),
optimization profiles (`profile`), caches (`cache`), plugin-node checks (`plugin_nodes`), FP4 weights
decoded for the graph validation runs (`fp4_weights`), engines as validation runs them (`candidate`)
and the engine runtime behind `runtime.Engine` (`runtime`)."""

from mlpdeploy.backends.tensorrt.options import RTXOptions, TensorRTOptions  # noqa: F401, E402
