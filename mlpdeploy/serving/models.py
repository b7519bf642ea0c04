"""The models a server holds: each a loaded `Engine` under a name, one version ("1"), its KServe v2
metadata and Triton-style config, and (for `--kv-cache` decoders) a generator with a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine, resolve_artifact
from mlpdeploy.serving.datatypes import v2_datatype
from mlpdeploy.serving.package import model_name
from mlpdeploy.serving.protocol import InferRequest, RequestError
from mlpdeploy.serving.triton_config import TritonOptions, model_config

VERSION = "1"
# A decoder's threads stop spinning when a step returns: between steps the scheduler and the server's
# event loop need the cores (measured: SmolLM2 int4 on 2 cores, through HTTP, one client: 123 → 140
# tokens/s against never spinning, 16 clients 334 → 388; threads spinning between steps too gave about
# half the tokens/s, in-process at 1 and 8 clients).


@dataclass
class ServedModel:
    name: str
    engine: Engine
    generator: object | None = None  # CachedGenerator for cached decoders
    tokenizer: object | None = None
    scheduler: object | None = None  # runtime.scheduler.Scheduler (or SoloScheduler) for cached decoders: every generate request

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx" if self.engine.backend == "onnxruntime" else "tensorrt_plan"

    def metadata(self) -> dict:
        """KServe v2 model metadata: the manifest's tensors, -1 for every dynamic dim."""
        def dims(shape):
            return [-1 if isinstance(d, str) else int(d) for d in shape]

        m = self.engine.manifest
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": self.platform,
            "inputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": dims(s.shape)} for s in m.inputs],
            "outputs": [{"name": o["name"], "datatype": v2_datatype(o["dtype"]), "shape": dims(o["shape"])} for o in m.outputs],
        }

    def config(self) -> dict:
        """The model's Triton config (as `mlpdeploy package` writes it), as JSON."""
        backend = self.engine.backend if self.platform == "tensorrt_plan" else None
        fields, _ = model_config(self.name, self.engine.path, self.engine.manifest, TritonOptions(), backend)
        return fields

    def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Run the request's inputs; a mismatch with the manifest is a 400 naming it."""
        expected = {s.name: v2_datatype(s.dtype) for s in self.engine.manifest.inputs}
        for name, datatype in request.datatypes.items():
            if name in expected and datatype != expected[name]:
                raise RequestError(400, f"input '{name}' of model '{self.name}' is {expected[name]}, got {datatype}")
        if request.outputs is not None:
            unknown = [n for n in request.outputs if n not in self.engine.output_names]
            if unknown:
                raise RequestError(400, f"unexpected inference output '{unknown[0]}' for model '{self.name}'; it has {self.engine.output_names}")
        try:
            return self.engine(**request.inputs)
        except MlpdeployError as exc:
            raise RequestError(400, str(exc)) from None


def load_models(paths: list[Path | str], threads: int | None = None, speculative: str | None = None, batching=None) -> dict[str, ServedModel]:
    """Load every model to serve, named as `mlpdeploy package` names them; errors before serving.
    `speculative`: a `--speculative` mode every cached decoder generates with (its own drafter each);
    `batching`: the schedulers' limits (`runtime.scheduler.SchedulerOptions`; default: its defaults)."""
    models: dict[str, ServedModel] = {}
    for path in paths:
        name = model_name(path)
        if name in models:
            raise MlpdeployError(f"two models are named {name!r}; serve each name once (rename a directory or file)")
        models[name] = load_model(name, path, threads, speculative, batching)
    return models


def load_model(name: str, path: Path | str, threads: int | None = None, speculative: str | None = None, batching=None) -> ServedModel:
    """One model to serve under `name`: its engine, and for a cached decoder its generator (with the
    `speculative` mode's drafter, when given), its scheduler (in-flight batching with the `batching`
    limits, where the build allows it) and tokenizer."""
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.scheduler import make_scheduler
    from mlpdeploy.runtime.speculative import make_drafter, parse_mode

    decoder = (manifest := find_manifest(resolve_artifact(path))) is not None and manifest.cache is not None
    engine = Engine.load(path, threads=threads, session_entries=IDLE_BETWEEN_RUNS if decoder else None)
    model = ServedModel(name, engine)
    if engine.cache is not None and engine.session is not None:
        drafter = make_drafter(parse_mode(speculative), engine, threads) if speculative else None
        model.generator = CachedGenerator(engine, drafter)
        model.scheduler = make_scheduler(engine, batching, drafter)
        model.tokenizer = _tokenizer(engine)
    return model


def close_models(models: dict[str, ServedModel]) -> None:
    """Stop the models' schedulers (requests still running end with an error)."""
    for model in models.values():
        if model.scheduler is not None:
            model.scheduler.close()


def _tokenizer(engine: Engine):
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    try:
        return tokenizer_for(engine.manifest, engine.path.parent)
    except MlpdeployError:
        return None  # generate then takes token ids ("input_ids") only
