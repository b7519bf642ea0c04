"""The manifest written beside every ONNX model mlpdeploy produces: inputs, dims, provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpdeploy.atomic import read_json, write_json
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec
from mlpdeploy.model.kv_cache import CacheLayout

FORMAT = "mlpdeploy-manifest/1"


def manifest_path(model_path: Path | str) -> Path:
    """`out/llama.onnx` → `out/llama.manifest.json`; `x.ort.onnx` → `x.ort.manifest.json`."""
    model_path = Path(model_path)
    stem = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.name
    return model_path.parent / f"{stem}.manifest.json"


@dataclass
class Manifest:
    """What a model expects and where it came from. `dims` bounds each dynamic dim."""

    source: str
    kind: str
    opset: int
    inputs: list[InputSpec]
    outputs: list[dict[str, Any]]
    dims: dict[str, list[int]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] | None = None  # a decoder's KV cache (CacheLayout.to_json()): which layers keep one
    # draft heads built in as outputs draft_logits.{j} (docs/decoding.md): {"heads": N, "token_ids": [..] | None}
    draft_heads: dict[str, Any] | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "source": self.source,
            "kind": self.kind,
            "opset": self.opset,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": self.outputs,
            "dims": self.dims,
            "versions": self.versions,
            "history": self.history,
            **({"cache": self.cache} if self.cache is not None else {}),
            **({"draft_heads": self.draft_heads} if self.draft_heads is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        return cls(
            source=data["source"],
            kind=data["kind"],
            opset=data["opset"],
            inputs=[InputSpec.from_json(i) for i in data["inputs"]],
            outputs=data["outputs"],
            dims=data.get("dims", {}),
            versions=data.get("versions", {}),
            history=data.get("history", []),
            cache=data.get("cache"),
            draft_heads=data.get("draft_heads"),
        )

    def save_beside(self, model_path: Path | str) -> Path:
        return write_json(manifest_path(model_path), self.to_json())

    def derived(self, stage: str, **info: Any) -> "Manifest":
        """A copy for a model derived from this one (rewrite, build), with the stage recorded."""
        data = self.to_json()
        data["history"] = [*self.history, {"stage": stage, **info}]
        return Manifest.from_json(data)

    def without(self, inputs: list[str], outputs: list[str]) -> "Manifest":
        """This manifest less the graph inputs and outputs a rewrite removed; a KV cache then keeps
        only the layers whose cache inputs all stay (`cache.layers`)."""
        if not inputs and not outputs:
            return self
        data = self.to_json()
        data["inputs"] = [i for i in data["inputs"] if i["name"] not in inputs]
        data["outputs"] = [o for o in data["outputs"] if o["name"] not in outputs]
        if self.cache is not None:
            kept = {i["name"] for i in data["inputs"]}
            layout = CacheLayout.from_json(self.cache)
            data["cache"] = {**self.cache, "layers": [layer for layer in layout.layers if set(layout.input_names(layer)) <= kept]}
        return Manifest.from_json(data)

    def with_additions(self, outputs: list[dict[str, Any]], entries: dict[str, Any]) -> "Manifest":
        """This manifest with the graph outputs a rewrite added and the entries it set (e.g. `draft_heads`)."""
        if not outputs and not entries:
            return self
        data = self.to_json()
        data["outputs"] = [*data["outputs"], *outputs]
        data.update(entries)
        return Manifest.from_json(data)

    def module_overrides(self) -> dict[str, str | dict]:
        """The torch-side edits the graph's rewrites are exact against (module path → "zero" |
        "identity" | a sparse-mlp site; see mlpdeploy.model.overrides), from every rewrite recorded in the history."""
        found: dict[str, str | dict] = {}
        for entry in self.history:
            found.update(entry.get("module_overrides", {}))
        return found

    def last(self, stage: str) -> dict[str, Any]:
        """The latest history entry of `stage` (e.g. "build": backend, target, precision), or {}."""
        entries = [h for h in self.history if h.get("stage") == stage]
        return entries[-1] if entries else {}

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def load_manifest(path: Path | str) -> Manifest:
    """Read a manifest file, with a one-line error if it is missing or malformed."""
    data = read_json(path, "manifest", "export the model with `mlpdeploy export` to create it")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MlpdeployError(f"{path} is not an mlpdeploy manifest (format {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
    return Manifest.from_json(data)


def find_manifest(model_path: Path | str) -> Manifest | None:
    """The manifest beside `model_path`, or None if there is none."""
    path = manifest_path(model_path)
    return load_manifest(path) if path.exists() else None
