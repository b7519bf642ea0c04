"""Backend `onnxruntime`: an offline-optimized ONNX model plus the session options to run it.

Before ONNX Runtime optimizes it, the graph gets ONNX Runtime's fused contrib ops (`fuse_for_ort`:
pass `ort-decoder` for a cached decoder, `ort-fusions` for any other graph; `--no-ort-fusions`
skips it). At level `all` (the default) the model is saved optimized at `extended`, which is
portable across CPUs, and the saved session options say `all`: ONNX Runtime applies its
CPU-specific layout transforms (NCHWc convolutions) when it loads the model where it runs.
With `--ort-kernels` (`OrtOptions.kernels`) the compiled kernels library is copied beside the
model and named in its saved settings, and the nodes it computes keep their function bodies
(`kernels.restore_function_bodies`), so the artifact also runs in stock ONNX Runtime.

Running: `runner` gives the backend's one runner (`runner.OrtRunner`, Polygraphy's OnnxrtRunner on
a session made with the saved settings), which validation, `runtime.Engine`, bench and serving use.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import onnx
import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.backends.base import Backend, BuildResult
from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.onnxruntime.attention_kernels import attention_rewrite
from mlpdeploy.backends.onnxruntime.genai_config import CONFIG_NAME, genai_config, write_genai_config
from mlpdeploy.backends.onnxruntime.kernels import kernel_file_name, prepare, restore_function_bodies, use_kernel_ops
from mlpdeploy.backends.onnxruntime.nbits_kernels import nbits_rewrite
from mlpdeploy.backends.onnxruntime.options import OrtOptions
from mlpdeploy.backends.onnxruntime.runner import OrtRunner, onnx_candidate, ort_runner
from mlpdeploy.backends.onnxruntime.session import OPT_LEVELS, PORTABLE_LEVEL, make_session, session_config, session_options_path
from mlpdeploy.backends.onnxruntime.views import restore_views, shared_views
from mlpdeploy.backends.options import BuildOptions
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.memory import release_memory, step
from mlpdeploy.model.manifest import find_manifest, manifest_path
from mlpdeploy.onnx_io import check_onnx_path, load_onnx


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime: offline graph optimization; CPU by default, CUDA EP when onnxruntime-gpu and a GPU are present"
    suffix = ".ort.onnx"
    Options = OrtOptions

    def build(self, model_path: Path, output: Path, options: BuildOptions | None = None) -> BuildResult:
        options, ignored = self.options(options)
        model_path, output = check_onnx_path(model_path), Path(output)
        proto = load_onnx(model_path, load_external_data=False)  # a clear error for a file that is not ONNX
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        config = session_config(options.opt_level, options.device)
        start = time.perf_counter()
        kernels = prepare(model_path, options.cache_root()) if options.kernels else None
        manifest = find_manifest(model_path)
        fusions, genai, restored = None, None, []
        with staged_files(output) as tmp:
            source = model_path
            if options.fusions:
                with step("ort fusions"):
                    source, fusions = fuse_for_ort(model_path, tmp.parent / f".{tmp.name}.fused.onnx", manifest)
                    release_memory()  # the fused IR model (reference cycles) holds the weights: free them before ONNX Runtime loads its own
            build_config = {**config, "custom_ops_libraries": [str(kernels.path)]} if kernels else config
            if config["graph_optimization_level"] == OPT_LEVELS["all"]:  # saved portable; the rest is done at load
                build_config = {**build_config, "graph_optimization_level": PORTABLE_LEVEL}
            with step("onnxruntime optimize"):
                views = shared_views(source)  # e.g. an int4 embedding reading the tied lm_head's codes
                make_session(source, _without_prepacking(build_config), optimized_output=tmp, external_data=external)
                restore_views(tmp, views)  # not a second copy of those initializers on disk
            if source != model_path:
                for leftover in source.parent.glob(f"{source.name}*"):
                    leftover.unlink()
            if not tmp.exists():
                raise MlpdeployError(f"ONNX Runtime wrote no optimized model for {model_path}")
            if kernels:  # the artifact carries its library; the saved settings name it relative to the model
                restored = restore_function_bodies(tmp, model_path)
                # after ONNX Runtime's own fusions, which know MatMulNBits and GroupQueryAttention only
                kernels.nodes.update(use_kernel_ops(tmp, (nbits_rewrite, attention_rewrite)))
                shutil.copy2(kernels.path, tmp.parent / kernel_file_name(output))
                config["custom_ops_libraries"] = [kernel_file_name(output)]
            session_options_path(tmp).write_text(json.dumps(config, indent=2) + "\n")
            if manifest is not None:
                derived = manifest.derived("build", backend=self.name, opt_level=options.opt_level, providers=config["providers"])
                if fusions is not None and fusions.get("shared_cache_buffer"):
                    # GroupQueryAttention reads each row's length from the mask (passes/gqa.py): rows may hold different lengths
                    derived.cache = {**derived.cache, "shared_buffer": True, "row_lengths": True}
                derived.save_beside(tmp)
                if derived.cache is not None:  # onnxruntime-genai can drive the cached decoder too
                    built = ir.from_proto(load_onnx(tmp, load_external_data=False))
                    genai, reason = genai_config(built, derived, output.name, config)
                    if genai is not None:
                        write_genai_config(tmp.parent, genai)
                    genai = {"config": CONFIG_NAME if genai is not None else None, **({"skipped": reason} if reason else {})}
        seconds = time.perf_counter() - start
        artifacts = {"model": output, "session_options": session_options_path(output)}
        if kernels:
            artifacts["kernels"] = output.parent / kernel_file_name(output)
        if manifest is not None:
            artifacts["manifest"] = manifest_path(output)
        if genai is not None and genai["config"]:
            artifacts["genai_config"] = output.parent / CONFIG_NAME
        # ORT's optimized graph drops module scopes: layers are compared on the graph it was built from.
        candidate = onnx_candidate(output, config, layer_model=model_path)
        return BuildResult(
            backend=self.name,
            artifacts=artifacts,
            info={"seconds": round(seconds, 3), "session": config, "bytes": output.stat().st_size,
                  "saved_at": build_config["graph_optimization_level"],
                  **({"ort_kernels": {**kernels.to_json(), "function_bodies_kept": restored}} if kernels else {}),
                  **({"ignored_options": ignored} if ignored else {}),
                  **({"fusions": fusions} if fusions is not None else {}),
                  **({"onnxruntime_genai": genai} if genai is not None else {})},
            candidate=candidate,
        )

    def runner(self, artifact: Path, name: str | None = None, threads: int | None = None) -> OrtRunner:
        return ort_runner(check_onnx_path(artifact), name=name, threads=threads)

    def load_candidate(self, artifact: Path) -> Candidate:
        return onnx_candidate(check_onnx_path(artifact))


def _without_prepacking(config: dict) -> dict:
    """The build's session only writes the optimized graph, which prepacking does not change (the
    saved model is the same byte for byte); without it ONNX Runtime makes no packed copy of every
    MatMul weight (SmolLM2-135M: peak 816 -> 303 MiB)."""
    return {**config, "config_entries": {**config.get("config_entries", {}), "session.disable_prepacking": "1"}}


def fuse_for_ort(model_path: Path, fused: Path, manifest) -> tuple[Path, dict]:
    """The graph with ONNX Runtime's fused contrib ops, written to `fused`: a cached decoder's attention
    and norms by pass `ort-decoder`, any other graph by pass `ort-fusions` (onnxscript's ORT fusions,
    mlpdeploy's ops kept one node each). Returns its path and the pass's report (`pass` names it)."""
    from mlpdeploy.backends.onnxruntime.passes.decoder import OrtDecoder
    from mlpdeploy.backends.onnxruntime.passes.fusions import OrtFusions
    from mlpdeploy.onnx_io import write_onnx

    model = ir.load(str(model_path))  # external data stays on disk (memory-mapped) until written out
    cached = manifest is not None and manifest.cache is not None
    fusion = OrtDecoder(max_positions=manifest.cache["max_positions"]) if cached else OrtFusions()
    fusion(model)
    write_onnx(model, fused)
    return fused, {"pass": fusion.name, **fusion.report.to_json()}
