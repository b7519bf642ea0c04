"""Train the zoo's small models on CPU and write their checkpoints and model cards.

    python -m mlpdeploy.zoo.train NAME [NAME …] | all     (`make models` trains all)

Each recipe is fixed (config, seed, steps, batch, learning rate), so a rerun reproduces the
checkpoint up to floating-point nondeterminism. Outputs: `models/checkpoints/NAME.safetensors`
(config and measured metrics in its metadata) and `models/cards/NAME.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlpdeploy.model.data import EVAL_FILES, TRAIN_FILES, DigitsTask, LMTask, Task, corpus_info
from mlpdeploy.model.torch_run import first_output_fn

from . import fan, gmlp, kan, kat, llama, mixer, opt, vit
from .common import CARDS, CHECKPOINTS, checkpoint_path, save_checkpoint
from .layers import init_weights


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # module in mlpdeploy.zoo holding the architecture
    model: Callable[[], nn.Module]
    config: object
    task: Task
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    summary: str = ""
    init: str = "GPT-style init N(0, 0.02)"


def _lm(name, family, cls, cfg, steps, summary) -> Recipe:
    return Recipe(name, family, lambda: cls(cfg), cfg, LMTask(seq_len=cfg.max_positions), steps=steps,
                  batch_size=16, lr=3e-3, summary=summary)


def _digits(name, family, cls, cfg, summary, steps=2000, lr=2e-3, **extra) -> Recipe:
    return Recipe(name, family, lambda: cls(cfg), cfg, DigitsTask(image_size=cfg.image_size, channels=cfg.in_chans),
                  steps=steps, batch_size=64, lr=lr, weight_decay=0.05, warmup=100, summary=summary, **extra)


KAN_INIT = ("GPT-style init N(0, 0.02) for Linear/Conv2d/Embedding weights; the KAN layers keep their own "
            "(GroupRational from its fitted presets, KANLinear as efficient-kan initializes it)")


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    _lm("llama-small", "llama", llama.LlamaLM, llama.SMALL, 1000,
        "LLaMA-style decoder: RMSNorm, rotary (RoPE) grouped-query causal attention, SwiGLU MLP, untied lm_head."),
    _lm("opt-relu-small", "opt", opt.OPTLM, opt.SMALL, 1000,
        "OPT-style decoder: pre-LayerNorm, learned positions, causal attention, ReLU MLP (fc1/fc2)."),
    _digits("vit-small", "vit", vit.ViT, vit.SMALL, steps=4000, lr=1e-3, summary=
            "Vision Transformer: Conv2d patch embedding, class token, learned positions, pre-LN blocks, GELU MLP."),
    _digits("mixer-small", "mixer", mixer.Mixer, mixer.SMALL,
            "MLP-Mixer: token-mixing MLP across patches and channel-mixing MLP per patch (GELU), mean pool."),
    _digits("gmlp-small", "gmlp", gmlp.GMLP, gmlp.SMALL,
            "gMLP: channel projection, spatial gating unit (token-dimension linear, identity init), GELU, mean pool."),
    _digits("kat-tiny", "kat", kat.KAT, kat.TINY, steps=2000, lr=1e-3, summary=
            "KAT: ViT whose MLP is GR-KAN — act1 (GroupRational, identity init) → fc1 → act2 (GroupRational, swish init) → fc2, "
            "8 groups, form A, shared numerator; each rational is one mlpdeploy::GroupRational op.", init=KAN_INIT),
    _digits("kan-tiny", "kan", kan.KANClassifier, kan.TINY, steps=2000, lr=2e-3, summary=
            "B-spline KAN: efficient-kan KANLinear layers 64 → 32 → 10 (grid 5 on [-1, 1], cubic), each one mlpdeploy::BSplineKAN op.",
            init=KAN_INIT),
    _digits("fan-tiny", "fan", fan.FANClassifier, fan.TINY, steps=3000, lr=3e-3, summary=
            "FAN: two FANLayers to width 128 (P = 32 cos and 32 sin features, 64 GELU features), linear head; each FANLayer one "
            "mlpdeploy::FANLayer op."),
]}


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


def _lr(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _lm_batches(recipe: Recipe):
    rng = np.random.default_rng(recipe.seed)
    while True:
        windows = torch.from_numpy(recipe.task.train_windows(rng, recipe.batch_size))
        yield windows[:, :-1], windows[:, 1:]


def _shift(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augmentation: translate each image by up to one pixel (background -1 fills in)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _digit_batches(recipe: Recipe):
    images, labels = (torch.from_numpy(a) for a in recipe.task.split("train"))
    gen = torch.Generator().manual_seed(recipe.seed)
    while True:
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            yield _shift(images[idx], gen), labels[idx]


def train(name: str, steps: int | None = None, threads: int = 1, out_dir: Path | None = None, log=None) -> dict:
    """Train recipe `name`, write its checkpoint and card; returns the measured numbers.

    Writes into the package (`checkpoints/`, `cards/`) unless `out_dir` is given (then
    `out_dir/checkpoints/` and `out_dir/cards/`).

    One torch thread by default: these models are too small to gain from intra-op threads,
    and on a shared 2-core machine two threads ran up to 10× slower under contention.
    """
    log = log or (lambda line: print(line, flush=True))
    recipe = RECIPES[name]
    steps = steps or recipe.steps
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    model = recipe.model()
    init_weights(model)
    for module in model.modules():  # architecture-specific init that must survive the generic one
        if hasattr(module, "init_identity"):
            module.init_identity()
    model.train()
    optimizer = _optimizer(model, recipe)
    batches = _lm_batches(recipe) if recipe.task.kind == "lm" else _digit_batches(recipe)
    start = time.perf_counter()
    running = None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe)
        x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
    train_seconds = time.perf_counter() - start
    model.eval()
    result = recipe.task.evaluate(first_output_fn(model, [recipe.task.input_name]), batch_size=32)
    metrics = {
        "metric": result["metric"],
        "value": round(result["value"], 4),
        "eval_samples": result["samples"],
        "baseline": _baseline(recipe.task),
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "final_train_loss": round(running, 4),
        "load_average": round(os.getloadavg()[0], 2),  # other work on the machine inflates train_seconds
    }
    checkpoints, cards = (CHECKPOINTS, CARDS) if out_dir is None else (out_dir / "checkpoints", out_dir / "cards")
    path = save_checkpoint(model, name, recipe.config, {"metrics": json.dumps(metrics, sort_keys=True)}, checkpoints)
    _write_card(recipe, model, metrics, path.stat().st_size, cards)
    log(f"{name}: {metrics['metric']} {metrics['value']} (baseline {metrics['baseline']['value']}), "
        f"{train_seconds:.0f} s, {path.stat().st_size / 1e6:.2f} MB")
    return metrics


def rewrite_card(name: str, out_dir: Path | None = None) -> Path:
    """Regenerate the card of `name` from its checkpoint's recorded metrics (no training)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    recipe = RECIPES[name]
    checkpoints, cards = (CHECKPOINTS, CARDS) if out_dir is None else (out_dir / "checkpoints", out_dir / "cards")
    path = checkpoints / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metrics = json.loads(f.metadata()["metrics"])
    model = recipe.model()
    model.load_state_dict(load_file(str(path)))
    _write_card(recipe, model, metrics, path.stat().st_size, cards)
    return cards / f"{name}.md"


def _baseline(task: Task) -> dict:
    if isinstance(task, LMTask):
        return {"name": "unigram (train byte frequencies, add-one)", "value": round(task.unigram_perplexity(), 3)}
    _, train_labels = task.split("train")
    _, eval_labels = task.split("eval")
    majority = np.bincount(train_labels).argmax()
    return {"name": "majority class", "value": round(float((eval_labels == majority).mean()), 4)}


def _write_card(recipe: Recipe, model: nn.Module, metrics: dict, size: int, cards: Path) -> None:
    params = sum(p.numel() for p in model.parameters())
    task = recipe.task
    if isinstance(task, LMTask):
        info = corpus_info()
        data = (
            f"`stdlib-bytes`: byte-level (vocab 256) text of {len(TRAIN_FILES)} pinned "
            f"Python standard-library files for training ({info['train_bytes']:,} bytes) and "
            f"{len(EVAL_FILES)} held-out files for evaluation "
            f"({info['eval_bytes']:,} bytes: {', '.join(EVAL_FILES)}), read from "
            f"the local CPython installation (corpus SHA-256 `{info['sha256'][:16]}…`, "
            f"{'the pinned one' if info['pinned'] else 'NOT the pinned CPython 3.11.7 one'}). "
            f"Training: random windows of {task.seq_len + 1} bytes. Evaluation: consecutive windows of "
            f"{task.seq_len} inputs, next-byte targets ({task.describe()['eval_tokens']:,} tokens)."
        )
        sample = f"batch {recipe.batch_size} × {task.seq_len} tokens"
    else:
        data = (
            f"scikit-learn's bundled `digits` (8×8, 10 classes), fixed split: sample i is eval when i % 5 == 4 "
            f"({metrics['eval_samples']} eval / {1797 - metrics['eval_samples']} train). Pixels scaled to [-1, 1]; "
            f"input {task.channels}×{task.image_size}×{task.image_size}. Training augmentation: random ±1 pixel shifts."
        )
        sample = f"batch {recipe.batch_size} images"
    text = f"""# {recipe.name}

{recipe.summary}

| | |
|---|---|
| builder | `mlpdeploy.zoo.{recipe.family}:{recipe.name.replace('-', '_')}` |
| parameters | {params:,} |
| checkpoint | `checkpoints/{recipe.name}.safetensors`, {size / 1e6:.2f} MB (fp32) |
| eval {metrics['metric']} | **{metrics['value']}** on {metrics['eval_samples']} eval samples |
| baseline | {metrics['baseline']['value']} ({metrics['baseline']['name']}) |
| training time | {metrics['train_seconds']} s ({metrics['steps']} steps, {sample}) |

## Architecture

```json
{json.dumps(asdict(recipe.config), indent=2)}
```

## Data

{data}

## Training

AdamW (β = 0.9, 0.95; weight decay {recipe.weight_decay} on matrices), peak learning rate {recipe.lr},
{recipe.warmup} warm-up steps then cosine decay to 10%, gradient clipping 1.0, seed {recipe.seed},
{recipe.init}. Final running train loss {metrics['final_train_loss']}.
Measured on {platform.machine()} with {torch.get_num_threads()} torch thread(s) ({os.cpu_count()} CPUs;
1-minute load average {metrics.get('load_average', 'not recorded')} when training ended: other jobs shared the CPUs),
torch {torch.__version__}, Python {platform.python_version()}.

Retrain: `python -m mlpdeploy.zoo.train {recipe.name}` (or `make models` for all).
"""
    cards.mkdir(parents=True, exist_ok=True)
    card = cards / f"{recipe.name}.md"
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(text)
    tmp.replace(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help=f"recipes to train, or 'all': {', '.join(RECIPES)}")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count (for quick trials)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--cards-only", action="store_true", help="rewrite the cards from the checkpoints' recorded metrics")
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"error: unknown recipe(s) {unknown}; available are {list(RECIPES)}", file=sys.stderr)
        return 2
    for name in names:
        if args.cards_only:
            print("wrote", rewrite_card(name))
        else:
            train(name, args.steps, args.threads)
            print("wrote", checkpoint_path(name), "and", CARDS / f"{name}.md")
    return 0

if __name__ == "__main__":
    sys.exit(main())
