"""Load an artifact and run it.

Public API:
    runtime.engine.Engine, runtime.generate.CachedGenerator   run an artifact; decode with a KV cache
    runtime.latency (measure_latency, model_bytes, peak_rss_bytes), runtime.measure (measure_decode)
(ONNX Runtime sessions: `mlpdeploy.backends.onnxruntime.session`; candidates: `mlpdeploy.backends.candidate`.)
"""
