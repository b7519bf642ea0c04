"""Serving: Triton model repositories (`package`), and a KServe v2 / Triton HTTP server (`server`).

Public API:
    package_triton        write a Triton model repository (+ a KServe InferenceService) for built models
    triton_config         the config.pbtxt of one model, as text
    create_app, serve     the ASGI app speaking the KServe v2 protocol, and running it with uvicorn
"""
