"""Stage 5, validate: reference (torch or ONNX) vs candidate, per output, per layer and by task metric.

Public API:
    validate(reference, candidate, ValidateOptions(...)) -> ValidationReport
    tolerances(precision, atol, rtol)    TOLERANCES    ErrorStats, error_stats
    compare_outputs / compare_layers / compare_task: the three comparisons `validate` calls
"""

from mlpdeploy.validate.compare import ValidateOptions, ValidationReport, as_candidate, validate  # noqa: F401
from mlpdeploy.validate.layers import compare_layers, layer_values  # noqa: F401
from mlpdeploy.validate.metrics import TOLERANCES, ErrorStats, error_stats, tolerances  # noqa: F401
from mlpdeploy.validate.outputs import compare_outputs  # noqa: F401
from mlpdeploy.validate.task import compare_task  # noqa: F401
