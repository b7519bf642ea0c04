"""Stage 1, export: torch → ONNX (`torch.onnx.export(dynamo=True)`), module scopes kept on
nodes, folded weights named after their modules, a manifest written beside the model.

Public API:
    export_model(bundle, output, opset=DEFAULT_OPSET, debug=False) -> ExportResult
    dynamic_shapes(bundle)    (the default opset: mlpdeploy.contract.DEFAULT_OPSET)
"""

from mlpdeploy.export.torch_export import ExportResult, dynamic_shapes, export_model  # noqa: F401
