"""Stage 3, rewrite: a pipeline of graph passes on onnx_ir models (node metadata survives).

One pass per file, registered in `registry.py`; `matching/` holds the graph-matching helpers
passes share. Every custom op a pass inserts is an ONNX model-local function, so the result
still runs in stock ONNX Runtime.

Public API:
    rewrite_model(model_path, output, passes) -> RewriteResult      op_counts(model)
    PassSpec, parse_pass_spec("name:key=value"), available_passes(), pass_class(name)
    run_pipeline(model, specs)    RewritePass, PassReport (to write a pass)
"""

from mlpdeploy.passes.base import PassReport, RewritePass  # noqa: F401
from mlpdeploy.passes.pipeline import PassSpec, available_passes, parse_pass_spec, pass_class, run_pipeline  # noqa: F401
from mlpdeploy.passes.rewrite import RewriteResult, op_counts, rewrite_model  # noqa: F401
