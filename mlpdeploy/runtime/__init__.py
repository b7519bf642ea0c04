"""Load an artifact and run it.

Public API:
    session_config, make_session, saved_session_config, session_options_path   (ONNX Runtime)
    Candidate, onnx_candidate      a built artifact as validation (and later serving) runs it
    runtime.engine.Engine, runtime.generate.CachedGenerator   run an artifact; decode with a KV cache
    runtime.latency (measure_latency, model_bytes, peak_rss_bytes), runtime.measure (measure_decode)
"""

from mlpdeploy.runtime.candidate import Candidate, onnx_candidate  # noqa: F401
from mlpdeploy.runtime.onnxruntime import make_session, saved_session_config, session_config, session_options_path  # noqa: F401
