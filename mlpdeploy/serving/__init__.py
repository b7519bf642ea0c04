"""Serving: Triton model repositories (`package`), and a KServe v2 / Triton HTTP server.

Public API:
    package_triton        write a Triton model repository (+ a KServe InferenceService) for built models;
                          backend="python" writes model.py files running mlpdeploy's runtime (triton_python, triton_model)
    triton_config         the config.pbtxt of one model, as text
    create_app            the ASGI app speaking the KServe v2 protocol (Starlette; the `serve` extra)
    Server                that app under uvicorn: `Server(paths).run()` blocks, `.start()` / `with` run it in a thread
    tritonserver.TritonServer   the real tritonserver of the nvidia-pytriton wheel on a repository (not imported here,
                          so that `python -m mlpdeploy.serving.tritonserver REPO` runs it cleanly)
"""

from mlpdeploy.serving.app import create_app  # noqa: F401
from mlpdeploy.serving.package import package_triton  # noqa: F401
from mlpdeploy.serving.server import Server  # noqa: F401
from mlpdeploy.serving.triton_config import triton_config  # noqa: F401
