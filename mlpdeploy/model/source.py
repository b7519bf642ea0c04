"""Resolve a MODEL argument into a ModelBundle.

Accepted forms:
  * a zoo name (`mlpdeploy zoo` lists them);
  * `path/to/file.py:factory` — `factory()` returns a `ModelBundle`, or `(module, inputs)`,
    or `(module, inputs, dynamic)`, where `inputs` is a tensor, a tuple/list of tensors (named
    after `forward`'s parameters) or a dict name → tensor in `forward`'s order, and `dynamic`
    maps input name → {axis: dim name} (default: axis 0 `batch`; axis 1 `seq` for rank-2
    integer and rank-3 float inputs);
  * a Hugging Face transformers checkpoint directory (config.json + weights; extra `hf`);
  * a `torch.export` program saved as `.pt2`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle, infer_input_specs, set_eval

ACCEPTED = (
    "a zoo name ({zoo}), path/to/file.py:factory, a Hugging Face model directory "
    "(containing config.json), or a torch.export .pt2 file"
)


def accepted_forms() -> str:
    from mlpdeploy.model.zoo import ZOO

    return ACCEPTED.format(zoo=", ".join(ZOO))


def load_model(spec: str) -> ModelBundle:
    """The ModelBundle that `spec` names (see module docstring), or a one-line error."""
    from mlpdeploy.model.zoo import ZOO

    if spec in ZOO:
        return ZOO[spec].build()
    path_part, colon, factory = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if colon:
        return _from_factory(Path(path_part), factory, spec)
    path = Path(spec)
    if path.suffix == ".py":
        raise MlpdeployError(f"{spec}: name the factory function too, as {spec}:build")
    if path.is_dir() and (path / "config.json").exists():
        from mlpdeploy.model.hf import load_hf_dir

        return load_hf_dir(path)
    if path.is_file() and path.suffix == ".pt2":
        return _from_pt2(path)
    if path.is_dir():
        raise MlpdeployError(f"{spec} is a directory without config.json; MODEL must be {accepted_forms()}")
    if path.suffix == ".onnx":
        raise MlpdeployError(f"{spec} is an ONNX file; MODEL must be a torch model: {accepted_forms()}")
    raise MlpdeployError(f"cannot find model {spec!r}; MODEL must be {accepted_forms()}")


def _import_file(path: Path):
    if not path.is_file():
        raise MlpdeployError(f"model file {path} not found; MODEL file.py:factory must name an existing Python file")
    # A stable name (not hash(), which Python salts per process): it appears in every exported node's
    # metadata (class hierarchy), so a salted one made two exports of the same file differ (found by
    # tests/test_determinism.py).
    name = f"mlpdeploy_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise MlpdeployError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _from_factory(path: Path, factory_name: str, spec: str) -> ModelBundle:
    module = _import_file(path)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise MlpdeployError(
            f"{path} has no function {factory_name!r}; define {factory_name}() returning (module, example_inputs)"
        )
    try:
        result = factory()
    except Exception as exc:
        raise MlpdeployError(f"{spec} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(result, ModelBundle):
        result.source, result.kind = spec, "factory"
        return result
    if not isinstance(result, tuple) or len(result) not in (2, 3) or not isinstance(result[0], torch.nn.Module):
        raise MlpdeployError(
            f"{spec} returned {type(result).__name__}; a factory must return (module, example_inputs) "
            "or (module, example_inputs, dynamic_axes) or a ModelBundle"
        )
    return bundle_from_module(result[0], result[1], result[2] if len(result) == 3 else None, spec, "factory")


def bundle_from_module(module: torch.nn.Module, inputs, dynamic, source: str, kind: str) -> ModelBundle:
    """Wrap a module and its example inputs (tensor, sequence or dict) into a ModelBundle."""
    set_eval(module)
    named = _name_inputs(module, inputs, source)
    return ModelBundle(
        module=module,
        example_inputs=named,
        inputs=infer_input_specs(named, dynamic),
        output_names=[],
        source=source,
        kind=kind,
    )


def _name_inputs(module: torch.nn.Module, inputs, source: str) -> dict[str, torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, dict):
        named = dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        names = params[: len(inputs)] + [f"input_{i}" for i in range(len(params), len(inputs))]
        named = dict(zip(names, inputs))
    else:
        raise MlpdeployError(f"{source}: example inputs must be a tensor, a tuple of tensors or a dict, got {type(inputs).__name__}")
    bad = [k for k, v in named.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise MlpdeployError(f"{source}: example input(s) {', '.join(bad)} are not tensors; only tensor inputs are supported")
    return named


def _from_pt2(path: Path) -> ModelBundle:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise MlpdeployError(f"{path} is not a loadable torch.export program ({type(exc).__name__}); save it with torch.export.save") from None
    args, kwargs = program.example_inputs or ((), {})
    if not args and not kwargs:
        raise MlpdeployError(f"{path} carries no example inputs; export it with torch.export.export(model, args) and save it again")
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    tensors = list(args) + list(kwargs.values())
    names = [n.name for n in placeholders] if len(placeholders) == len(tensors) else [f"input_{i}" for i in range(len(tensors))]
    dynamic = {}
    for name, node in zip(names, placeholders):
        val = node.meta.get("val")
        if val is not None:
            dynamic[name] = {i: str(s) for i, s in enumerate(val.shape) if not isinstance(s, int)}
    bundle = bundle_from_module(program.module(), dict(zip(names, tensors)), dynamic, str(path), "pt2")
    bundle.exported_program = program
    return bundle
