"""Rules that rewrite graphs into ONNX Runtime contrib ops (used by the `ort-decoder` pass)."""
