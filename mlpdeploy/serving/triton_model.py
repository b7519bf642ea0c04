"""`MlpdeployModel`: what the `model.py` of a `package --triton-backend python` repository runs.

Triton's Python backend loads `REPO/<name>/<version>/model.py`, whose `TritonPythonModel` makes one
of these in `initialize(args)` and hands it every `execute` and `finalize`. It reads
its config's parameters — `artifact` (the built model's file in the version directory) and
`max_batch_size` — and loads the artifact with mlpdeploy's runtime (`Engine`, ONNX Runtime with
the build's session settings, or a TensorRT engine).

- A cached decoder (`--kv-cache`) is a decoupled model: its requests are generate requests
  (`triton_generate`), answered token by token or all at once.
- Any other model answers inference requests in batches: Triton's dynamic batcher hands `execute`
  several requests at once; the ones whose inputs agree in every dim but the batch dim run as one
  batch (concatenated along dim 0, the outputs split back), others run alone. A request whose inputs
  do not match the manifest gets its own one-line error; the rest of the batch runs.

Runs inside the Python backend's stub only (`triton_python_backend_utils` exists there alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.serving.models import load_model
from mlpdeploy.serving.triton_generate import TritonGenerate, triton_error
from mlpdeploy.serving.triton_tensors import output_tensor, read_input


class MlpdeployModel:
    """The Python backend's model interface (execute / finalize) over mlpdeploy's runtime, made from the
    `args` of `TritonPythonModel.initialize`."""

    def __init__(self, args: dict):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        if "artifact" not in params:
            raise MlpdeployError(f"model {args['model_name']}: config.pbtxt names no 'artifact' parameter; re-run `mlpdeploy package --triton-backend python`")
        artifact = Path(args["model_repository"]) / args["model_version"] / params["artifact"]
        self.model = load_model(args["model_name"], artifact)
        self.batched = config.get("max_batch_size", 0) > 0
        self.outputs = list(self.model.engine.output_names)
        self.generate = None
        if self.model.generator is not None:
            if not pb_utils.using_decoupled_model_transaction_policy(config):
                raise MlpdeployError(f"model {args['model_name']} is a cached decoder; its config needs model_transaction_policy {{ decoupled: true }}")
            self.generate = TritonGenerate(pb_utils, self.model, int(params.get("max_batch_size", 1)), pb_utils.Logger)

    def execute(self, requests):
        if self.generate is not None:
            return self.generate.execute(requests)
        return self.infer(requests)

    def infer(self, requests) -> list:
        """One response per request, in order; requests whose inputs stack run as one batch."""
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, request in enumerate(requests):
            inputs = {}
            for spec in self.model.engine.manifest.inputs:
                value = read_input(self.pb, request, spec.name)
                if value is not None:
                    inputs[spec.name] = value
            try:
                inputs = self.model.engine.check(inputs)
            except MlpdeployError as exc:
                responses[index] = self.pb.InferenceResponse(output_tensors=[], error=triton_error(self.pb, str(exc)))
                continue
            key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(inputs.items())) if self.batched else (index,)
            groups.setdefault(key, []).append((index, inputs))
        for members in groups.values():
            self._run_group(requests, members, responses)
        return responses

    def _run_group(self, requests, members: list[tuple[int, dict]], responses: list) -> None:
        names = members[0][1].keys()
        batch = {name: np.concatenate([inputs[name] for _, inputs in members]) for name in names} if len(members) > 1 else members[0][1]
        try:
            outputs = self.model.engine(**batch)
        except Exception as exc:  # the whole batch failed: every request in it gets the error
            message = str(exc) if isinstance(exc, MlpdeployError) else f"{type(exc).__name__}: {exc}"
            for index, _ in members:
                responses[index] = self.pb.InferenceResponse(output_tensors=[], error=triton_error(self.pb, message, "INTERNAL"))
            return
        start = 0
        for index, inputs in members:
            rows = next(iter(inputs.values())).shape[0] if len(members) > 1 else None
            wanted = requests[index].requested_output_names() or self.outputs
            tensors = [output_tensor(self.pb, name, outputs[name] if rows is None else outputs[name][start:start + rows])
                       for name in self.outputs if name in wanted]
            responses[index] = self.pb.InferenceResponse(output_tensors=tensors)
            start += rows or 0

    def finalize(self) -> None:
        if self.generate is not None:
            self.generate.close()
