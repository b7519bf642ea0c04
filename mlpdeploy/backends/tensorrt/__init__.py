"""Helpers shared by the TensorRT-family backends (`tensorrt_rtx.py`, `tensorrt_datacenter.py`):
the parse + build driver and artifacts (`engine`), build-log reading (`log`), optimization
profiles (`profile`), caches (`cache`), plugin-node checks (`plugin_nodes`) and engines as
validation runs them (`candidate`)."""
