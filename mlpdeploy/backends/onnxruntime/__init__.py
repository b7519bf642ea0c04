"""Backend `onnxruntime`: build (`backend`), sessions and their saved settings (`session`), the graph
passes that fuse ONNX Runtime contrib ops (`passes/`), the compiled CPU kernels library (`kernels`),
and onnxruntime-genai's config for cached decoders (`genai_config`)."""

from mlpdeploy.backends.onnxruntime.options import OrtOptions  # noqa: F401, E402
