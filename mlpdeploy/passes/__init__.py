"""Stage 3, rewrite: a pipeline of graph passes on onnx_ir models (node metadata survives).

One pass per file, registered in `registry.py`; `matching/` holds the graph-matching helpers
passes share. Every custom op a pass inserts is an ONNX model-local function, so the result
still runs in stock ONNX Runtime. A pass declares its typed options, its phase and the torch
reference edit it implies (`base.py`); docs/passes.md is `passes_markdown()`.

Public API:
    rewrite_model(model_path, output, passes) -> RewriteResult      op_counts(model)
    PassSpec, parse_pass_spec("name:key=value"), available_passes(), pass_class(name)
    run_pipeline(model, specs) -> [report per pass]    check_pipeline(specs)    pass_report(reports, name)
    reference_edits(reports) -> [ReferenceEdit]    PHASES
    RewritePass, PassReport, Option, ReferenceEdit (to write a pass)
"""

from mlpdeploy.passes.base import PHASES, PassReport, ReferenceEdit, RewritePass  # noqa: F401
from mlpdeploy.passes.describe import passes_markdown  # noqa: F401
from mlpdeploy.passes.options import Option  # noqa: F401
from mlpdeploy.passes.pipeline import (  # noqa: F401
    PassSpec,
    available_passes,
    check_pipeline,
    parse_pass_spec,
    pass_class,
    pass_report,
    reference_edits,
    run_pipeline,
    spec_text,
)
from mlpdeploy.passes.rewrite import RewriteResult, op_counts, rewrite_model  # noqa: F401
