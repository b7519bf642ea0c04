"""A LLaMA-shaped Hugging Face directory with random weights, for testing compile at scale.

The default shape is TinyLlama-1.1B's (22 layers, d 2048, MLP 5632, 32 query / 4 KV heads,
vocab 32,000, untied LM head: 1.1 B parameters, 4.4 GB in fp32). Weights are drawn N(0, 0.02)
(norms 1), tensor by tensor from a fixed seed, and written in safetensors shards of about
1 GB with an index, so building it holds one shard in memory, not the model:

    python -m mlpdeploy.zoo.random_llama -o /tmp/llama-1.1b-random
    python -m mlpdeploy.zoo.random_llama --layers 2 --hidden 256 --intermediate 704 -o /tmp/small

A directory that already holds the same build is kept (the stamp file records the shape).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

STAMP = "mlpdeploy-random-llama.json"
SHARD_BYTES = 2**30


@dataclass
class Shape:
    layers: int = 22
    hidden: int = 2048
    intermediate: int = 5632
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000
    max_positions: int = 2048
    seed: int = 0

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           max_position_embeddings=self.max_positions, rms_norm_eps=1e-5, tie_word_embeddings=False,
                           architectures=["LlamaForCausalLM"])


def _tensor_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape, in the order transformers' LlamaForCausalLM names them."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(shape.config())
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _write(tmp: Path, shape: Shape) -> None:
    import torch
    from safetensors.torch import save_file

    shapes = _tensor_shapes(shape)
    groups: list[list[str]] = [[]]  # the tensor names of each shard, in order, each under SHARD_BYTES
    size = 0
    for name, dims in shapes.items():
        nbytes = 4 * torch.Size(dims).numel()
        if size and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(shape.seed)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shard = {name: torch.ones(shapes[name]) if name.endswith("norm.weight") else torch.empty(shapes[name]).normal_(0.0, 0.02, generator=generator)
                 for name in group}
        save_file(shard, str(tmp / file), metadata={"format": "pt"})
        del shard
        weight_map.update(dict.fromkeys(group, file))
    total = sum(4 * torch.Size(dims).numel() for dims in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    shape.config().save_pretrained(str(tmp))


def build(out: Path, shape: Shape | None = None, force: bool = False) -> Path:
    """Write the random-weight LLaMA directory `out` (kept when it already holds this shape)."""
    shape = shape or Shape()
    out = Path(out)
    stamp = out / STAMP
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == asdict(shape):
        return out
    if out.exists() and not stamp.is_file() and any(out.iterdir()):
        raise SystemExit(f"error: {out} exists and is not a random-llama build; choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        _write(tmp, shape)
        (tmp / STAMP).write_text(json.dumps(asdict(shape), indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.zoo.random_llama", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, type=Path)
    defaults = Shape()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory holds this build")
    args = parser.parse_args(argv)
    shape = Shape(**{field: getattr(args, field) for field in asdict(defaults)})
    print(build(args.output, shape, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
