"""onnx_ir matching helpers shared by rewrite passes: constants, linears, activations, scopes.

A matcher either returns what it recognized or raises `MatchFailure(reason)`; the reason is
what a pass records in `PassReport.skipped`, so "why did my pass not fire?" has an answer.
Recognizers that merely probe (`match_activation`) return None instead of raising.
"""

from mlpdeploy.passes.matching.activation import SQRT_HALF, Activation, match_activation, polynomial, product_factors  # noqa: F401
from mlpdeploy.passes.matching.core import (  # noqa: F401
    CLASSES_KEY,
    FOLDABLE,
    LINEAR_OPS,
    NAMESPACE_KEY,
    STANDARD_DOMAINS,
    MatchFailure,
    check,
    close,
    constant,
    describe,
    fail,
    float_attr,
    int_attr,
    is_constant,
    op_label,
    producer,
    rank,
    require_constant,
    scalar,
)
from mlpdeploy.passes.matching.graph import (  # noqa: F401
    add_initializer,
    check_enclosed,
    common_scope,
    inline_call,
    remove_dead,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.passes.matching.linear import Linear, looks_linear, match_linear  # noqa: F401
