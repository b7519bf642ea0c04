"""Stage 2, analyze: calibration-time measurements keyed by module scope, written as a plan.json.

One analysis per file, registered in `registry.py`; an analysis that proposes rewrites puts
them in the plan's `passes` (with their sites), which `rewrite`/`compile --plan` run.

Public API:
    analyze_model(model, AnalyzeOptions(analyses={"layer-stats": None}, ...)) -> Plan
    Plan, load_plan(path), passes_with_plan(plan_path, passes, onnx_model)
    find_mlps(module) -> [MLPSite]     Analysis, AnalysisContext, AnalysisResult, Table (to write one)
"""

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table  # noqa: F401
from mlpdeploy.analyze.mlps import MLPSite, find_mlps  # noqa: F401
from mlpdeploy.analyze.plan import Plan, load_plan, passes_with_plan  # noqa: F401
from mlpdeploy.analyze.registry import ANALYSES  # noqa: F401
from mlpdeploy.analyze.run import AnalyzeOptions, analyze_model  # noqa: F401
