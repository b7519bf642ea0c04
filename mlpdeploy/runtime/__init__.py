"""Load an artifact and run it.

Public API:
    session_config, make_session, saved_session_config, session_options_path   (ONNX Runtime)
    Candidate, onnx_candidate      a built artifact as validation (and later serving) runs it
"""

from mlpdeploy.runtime.candidate import Candidate, onnx_candidate  # noqa: F401
from mlpdeploy.runtime.onnxruntime import make_session, saved_session_config, session_config, session_options_path  # noqa: F401
