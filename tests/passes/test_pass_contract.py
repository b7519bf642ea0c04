"""The pass contract (passes/base.py, options.py, pipeline.py): what every registered pass declares,
typed options refused in one line with their allowed values, phase order enforced, reports kept per
position, and the torch reference edit a pass declares applied by compile with no per-pass case
(shown with a pass registered here, which compile has never heard of)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes import (
    PHASES,
    Option,
    PassReport,
    PassSpec,
    ReferenceEdit,
    RewritePass,
    available_passes,
    check_pipeline,
    parse_pass_spec,
    pass_class,
    pass_report,
    passes_markdown,
    reference_edits,
    run_pipeline,
)
from mlpdeploy.passes.registry import PASSES

from .conftest import GraphBuilder

DOCS = Path(__file__).parents[2] / "docs" / "passes.md"


@pytest.mark.parametrize("name", available_passes())
def test_every_pass_declares_its_contract(name):
    cls = pass_class(name)
    assert cls.name == name and cls.description and cls.phase in PHASES and cls.reference
    for key, option in cls.options.items():
        assert isinstance(option, Option) and option.help, f"{name}:{key} needs a help line"
        assert cls.checked_options({})[key] == option.default


def test_options_are_typed():
    flag, count, ratio, form = Option(True, "h"), Option(0, "h", minimum=0), Option(0.5, "h"), Option("a", "h", choices=("a", "b"))
    assert [flag.check(v, "x") for v in ("on", "0", "True", False)] == [True, False, True, False]
    assert count.check("7", "x") == 7 and ratio.check(2, "x") == 2.0 and ratio.check("1e-3", "x") == 0.001 and form.check("b", "x") == "b"
    for option, value, message in [
        (flag, "maybe", "x='maybe' is not true or false"),
        (count, "2.5", "x='2.5' is not an int >= 0"),
        (count, True, "x=True is not an int >= 0"),  # a bool is no int here
        (count, -1, "x=-1 is too small; it must be an int >= 0"),
        (ratio, "half", "x='half' is not a number"),
        (form, "c", "x=c is not allowed; choose one of a, b"),
    ]:
        with pytest.raises(MlpdeployError, match=f"^{message}$"):
            option.check(value, "x")
    assert form.describe() == "str = a (a, b): h" and count.describe() == "int = 0 (an int >= 0): h"
    with pytest.raises(TypeError):
        Option([1], "a list is no option type")
    with pytest.raises(TypeError):
        Option("c", "a default outside its choices", choices=("a", "b"))


def test_a_declaration_that_is_not_an_option_is_refused():
    with pytest.raises(TypeError, match="options are Option"):
        type("Loose", (RewritePass,), {"name": "loose", "description": "d", "options": {"k": 3}, "rewrite": lambda self, m: None})
    with pytest.raises(TypeError, match="phase one of"):
        type("Lost", (RewritePass,), {"name": "lost", "description": "d", "phase": "whenever", "rewrite": lambda self, m: None})


@pytest.mark.parametrize("text, message", [
    ("quantize-weights:format=int5", "pass quantize-weights: format=int5 is not allowed; choose one of nvfp4, mxfp4, int4, int4asym"),
    ("quantize-weights:accuracy_level=high", "pass quantize-weights: accuracy_level='high' is not one of 0, 1, 2, 3, 4"),
    ("sparse-mlp:k=-3", "pass sparse-mlp: k=-3 is too small; it must be an int >= 0"),
    ("fuse-gated-mlp:bilinear=sometimes", "pass fuse-gated-mlp: bilinear='sometimes' is not true or false"),
    ("fuse-gated-mlp:colour=red", "pass fuse-gated-mlp: unknown option 'colour'; options are: bilinear"),
    ("fuse-gated-mlp:bilinear", "pass fuse-gated-mlp: option 'bilinear' must be key=value"),
])
def test_a_bad_option_is_refused_in_one_line(text, message):
    with pytest.raises(MlpdeployError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        parse_pass_spec(text)


def test_the_cli_refuses_a_bad_option_with_its_allowed_values_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["rewrite", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "out.onnx"), "--pass", "convert-precision:precision=fp8"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: pass convert-precision: precision=fp8 is not allowed; choose one of fp32, fp16, bf16"
    assert list(tmp_path.iterdir()) == []


def test_a_plans_options_are_checked_too():
    """Options from JSON (a plan) or Python are held to the same declarations as `--pass` text."""
    with pytest.raises(MlpdeployError, match="^pass quantize-weights: block=48 is not allowed"):
        check_pipeline([PassSpec("quantize-weights", {"block": 48})])
    with pytest.raises(MlpdeployError, match="^pass drop-layers: mlp='two' is not an int >= 0$"):
        pass_class("drop-layers")(mlp="two")


@pytest.mark.parametrize("order, later", [
    (["convert-precision", "fuse-gated-mlp"], "fuse-gated-mlp (rewrite) cannot run after convert-precision (precision)"),
    (["ort-fusions", "quantize-weights"], "quantize-weights (rewrite) cannot run after ort-fusions (lowering)"),
    (["fuse-gated-mlp", "ort-decoder", "convert-precision"], "convert-precision (precision) cannot run after ort-decoder (lowering)"),
])
def test_phase_order_is_enforced(order, later):
    with pytest.raises(MlpdeployError, match=f"^pass {later.replace('(', '[(]').replace(')', '[)]')}: passes run in phase order "
                                             "rewrite → precision → lowering; put"):
        check_pipeline([PassSpec(name) for name in order])
    check_pipeline([PassSpec(name) for name in sorted(order, key=lambda n: PHASES.index(pass_class(n).phase))])


def linear_model(scale: float = 1.0) -> ir.Model:
    g = GraphBuilder()
    x = g.input("x", ("batch", 8))
    y = g.op("MatMul", x, g.init("w", np.eye(8, 3, dtype=np.float32) * scale), name="head", scope=["", "head", "linear"])
    y.dtype = ir.DataType.FLOAT
    return ir.Model(g.graph(y), ir_version=10)


def test_reports_are_kept_per_position():
    """The same pass twice: two reports, in order (they used to share one key, the spec text)."""
    model = linear_model()
    reports = run_pipeline(model, [PassSpec("fuse-gated-mlp"), PassSpec("drop-layers"), PassSpec("fuse-gated-mlp")])
    assert [r["pass"] for r in reports] == ["fuse-gated-mlp", "drop-layers", "fuse-gated-mlp"]
    assert reports[0] is not reports[2] and pass_report(reports, "drop-layers") is reports[1]
    with pytest.raises(KeyError, match="pass fuse-gated-mlp ran 2 times"):
        pass_report(reports, "fuse-gated-mlp")


class ZeroHead(RewritePass):
    """A pass only this test registers: zero the `head` linear's weight, an edit it declares."""

    name = "test-zero-head"
    description = "zero one linear's weight"
    options = {"scope": Option("head", "the linear to zero")}
    reference = "edited: that linear's weight is zero (reference_edit)"

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"zeroed": []})
        for node in model.graph:
            if node.op_type in ("MatMul", "Gemm") and node.inputs[1].const_value is not None:
                from mlpdeploy.scopes import module_path

                if module_path(node) == self.config["scope"]:
                    w = node.inputs[1].const_value.numpy()
                    node.inputs[1].const_value = ir.tensor(np.zeros_like(w), name=node.inputs[1].name)
                    report.details["zeroed"].append(self.config["scope"])
                    report.rewritten += 1
        return report

    @classmethod
    def reference_edit(cls, report: dict) -> ReferenceEdit | None:
        import copy

        import torch

        def zero(module):
            module = copy.deepcopy(module)
            with torch.no_grad():
                for path in report["zeroed"]:
                    module.get_submodule(path).weight.zero_()
            return module

        return ReferenceEdit(zero, f"{', '.join(report['zeroed'])} zeroed") if report["zeroed"] else None


@pytest.fixture
def zero_head_registered():
    PASSES.register(ZeroHead.name, ZeroHead)
    try:
        yield
    finally:
        del PASSES.entries[ZeroHead.name]


def test_compile_applies_the_reference_edit_a_pass_declares(zero_head_registered, tmp_path):
    """compile knows no pass by name: it validates against whatever edit the pass declares. The
    tiny fixture's `head` zeroed in the graph only would fail validation; with the edit it passes."""
    from mlpdeploy.compile import CompileOptions, compile_model

    tiny = f"{Path(__file__).parents[1] / 'fixtures' / 'tiny_mlp.py'}:build"
    report = compile_model(tiny, tmp_path / "out", CompileOptions(passes=[parse_pass_spec("test-zero-head:scope=head")], task_limit=None))
    assert report["passed"], report["validation"]
    assert report["validation"]["reference_edits"] == ["head zeroed"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["stages"]["rewrite"]["passes"][0]["zeroed"] == ["head"]
    assert reference_edits([{"pass": "test-zero-head", "rewritten": 0, "zeroed": []}]) == []
    # the same rewrite without its declaration: validation compares with the unedited model and fails
    PASSES.register(ZeroHead.name, type("Undeclared", (ZeroHead,), {"reference_edit": classmethod(lambda cls, report: None)}))
    plain = compile_model(tiny, tmp_path / "plain", CompileOptions(passes=[parse_pass_spec("test-zero-head")], task_limit=None))
    assert not plain["passed"] and "reference_edits" not in plain["validation"]


def test_mlpdeploy_passes_prints_the_declarations(monkeypatch):
    from mlpdeploy.cli.app import console

    monkeypatch.setattr(console, "width", 400)  # one row per option line, unwrapped
    result = CliRunner().invoke(cli, ["passes"])
    assert result.exit_code == 0, result.output
    for name in available_passes():
        assert name in result.output
    assert "accuracy_level: int = 4 (0, 1, 2, 3, 4): MatMulNBits' accuracy_level" in result.output


def test_docs_passes_md_is_the_registry():
    """docs/passes.md is generated (`mlpdeploy passes --markdown > docs/passes.md`); it must match."""
    result = CliRunner().invoke(cli, ["passes", "--markdown"])
    assert result.exit_code == 0 and result.output == passes_markdown()
    assert DOCS.read_text() == passes_markdown(), "docs/passes.md is stale: run `mlpdeploy passes --markdown > docs/passes.md`"
