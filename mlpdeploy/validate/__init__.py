"""Stage 5, validate: reference (torch or ONNX) vs candidate, per output, per layer and by task metric.

Public API:
    validate(reference, candidate, ValidateOptions(...)) -> ValidationReport
    tolerances(precision, atol, rtol) -> Tolerance    TOLERANCES    ErrorStats, error_stats
    validation_inputs(...) -> ValidationInputs: the task's held-out samples, a cached decoder's real prefill cache
    compare_outputs / compare_layers / compare_task: the three comparisons `validate` calls
    summarize(validation JSON) -> Summary: the verdict, the task line, outputs folded per kind (present.*.key)
"""

from mlpdeploy.validate.compare import ValidateOptions, ValidationReport, as_candidate, validate  # noqa: F401
from mlpdeploy.validate.inputs import ValidationInputs, validation_inputs  # noqa: F401
from mlpdeploy.validate.layers import compare_layers, layer_values  # noqa: F401
from mlpdeploy.validate.metrics import ErrorStats, error_stats  # noqa: F401
from mlpdeploy.validate.outputs import compare_outputs  # noqa: F401
from mlpdeploy.validate.summary import Summary, summarize  # noqa: F401
from mlpdeploy.validate.task import compare_task  # noqa: F401
from mlpdeploy.validate.tolerance import TOLERANCES, Tolerance, tolerances  # noqa: F401
