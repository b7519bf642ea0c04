"""What a MODEL is: a torch module with its inputs (ModelBundle), where it comes from (zoo,
file.py:factory, Hugging Face directory, .pt2), its I/O contract once exported (Manifest),
input data (generated, loaded, calibration, task eval splits), and running it in torch.

Public API:
    load_model(spec) -> ModelBundle            ModelBundle, InputSpec, TrainedMetrics
    Manifest, load_manifest, find_manifest, manifest_path
    generate_inputs, load_inputs, check_inputs, cast_to_specs
    calibration_batches(bundle, n, batch_size, seed, path)     Task, LMTask, DigitsTask
    resolve_task(bundle, DataOptions) -> Task | None, attach_task(bundle, DataOptions) -> ModelBundle
        (the one place a task comes from: --data, else the zoo model's own; see docs/data.md)
    run_module(module, feed, names), first_output_fn            capture_outputs, observe
"""

from mlpdeploy.model.bundle import InputSpec, ModelBundle, TrainedMetrics  # noqa: F401
from mlpdeploy.model.calibration import calibration_batches  # noqa: F401
from mlpdeploy.model.data import DigitsTask, LMTask, Task  # noqa: F401
from mlpdeploy.model.hooks import capture_outputs, observe  # noqa: F401
from mlpdeploy.model.inputs import cast_to_specs, check_inputs, generate_inputs, load_inputs  # noqa: F401
from mlpdeploy.model.manifest import Manifest, find_manifest, load_manifest, manifest_path  # noqa: F401
from mlpdeploy.model.source import load_model  # noqa: F401
from mlpdeploy.model.tasks import DataOptions, attach_task, resolve_task  # noqa: F401
from mlpdeploy.model.torch_run import first_output_fn, run_module  # noqa: F401
