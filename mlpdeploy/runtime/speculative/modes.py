"""`--speculative MODE`: the text of a mode → its drafter, with one-line errors.

    ngram[:n=3,k=8,min=1]   prompt lookup (n-gram sizes n down to min; at most k drafts)
    heads[:k=N]             the artifact's draft heads (outputs draft_logits.{j})
    self:PLAN[,k=4]         the model minus the layers the drop-layers passes of PLAN remove
    draft:ARTIFACT[,k=4]    another --kv-cache artifact with the same tokenizer

Every mode also takes `adaptive=0` (always draft k; default: k per row from its acceptance,
`DraftLength`), and the model drafters `cost=C` (a draft step's cost relative to the model's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine
from mlpdeploy.runtime.speculative.base import Drafter

MODES = "ngram[:n=3,k=8], heads[:k=N], self:PLAN or draft:ARTIFACT"
OPTIONS = {"ngram": {"n": int, "k": int, "min": int, "adaptive": int}, "heads": {"k": int, "adaptive": int},
           "self": {"k": int, "cost": float, "adaptive": int}, "draft": {"k": int, "cost": float, "adaptive": int}}
RANGES = {"n": (1, 16), "k": (1, 64), "min": (1, 16), "adaptive": (0, 1), "cost": (0.0, 100.0)}
NEEDS_PATH = {"self": "a drop-layers plan (self:plan.json)", "draft": "a draft artifact (draft:DIR)"}


@dataclass
class Mode:
    kind: str
    path: str | None = None
    options: dict = field(default_factory=dict)


def parse_mode(text: str) -> Mode:
    """`ngram:n=3,k=8` → Mode("ngram", None, {"n": 3, "k": 8}); a one-line error for anything else."""
    kind, _, rest = text.strip().partition(":")
    if kind not in OPTIONS:
        raise MlpdeployError(f"unknown --speculative mode {text!r}; choose {MODES}")
    mode = Mode(kind)
    for item in [i for i in rest.split(",") if i] if rest else []:
        key, eq, value = item.partition("=")
        if not eq:
            if kind not in NEEDS_PATH or mode.path is not None:
                raise MlpdeployError(f"--speculative {text!r}: {item!r} is not an option (key=value); {kind} takes {_known(kind)}")
            mode.path = item
            continue
        if key not in OPTIONS[kind]:
            raise MlpdeployError(f"--speculative {text!r}: unknown option {key!r}; {kind} takes {_known(kind)}")
        try:
            mode.options[key] = OPTIONS[kind][key](value)
        except ValueError:
            raise MlpdeployError(f"--speculative {text!r}: {key}={value!r} must be a number") from None
        low, high = RANGES[key]
        if not low <= mode.options[key] <= high:
            raise MlpdeployError(f"--speculative {text!r}: {key}={value} is out of range ({low} to {high})")
    if kind in NEEDS_PATH and mode.path is None:
        raise MlpdeployError(f"--speculative {kind} needs {NEEDS_PATH[kind]}")
    if kind == "ngram" and mode.options.get("min", 1) > mode.options.get("n", 3):
        raise MlpdeployError(f"--speculative {text!r}: min={mode.options['min']} is larger than n={mode.options.get('n', 3)}")
    return mode


def _known(kind: str) -> str:
    return ", ".join(f"{k}=" for k in OPTIONS[kind])


def session_entries(mode: Mode | None) -> dict[str, str] | None:
    """What the model's own session needs for `mode`: with a drafter model (self:, draft:) the two
    sessions step in turn, so each one's threads stop spinning when its run returns (`IDLE_BETWEEN_RUNS`)."""
    return IDLE_BETWEEN_RUNS if mode is not None and mode.kind in NEEDS_PATH else None


def make_drafter(text: str | Mode, engine: Engine, threads: int | None = None) -> Drafter:
    """The drafter `text` describes, for the model `engine` runs."""
    mode = parse_mode(text) if isinstance(text, str) else text
    options = dict(mode.options)
    adaptive = bool(options.pop("adaptive", 1))
    if mode.kind == "ngram":
        from mlpdeploy.runtime.speculative.ngram import NgramDrafter

        drafter = NgramDrafter(options.get("n", 3), options.get("k", 8), options.get("min", 1))
    elif mode.kind == "heads":
        from mlpdeploy.runtime.speculative.heads import HeadsDrafter

        drafter = HeadsDrafter(engine, options.get("k"))
    else:
        from mlpdeploy.runtime.speculative.model import ModelDrafter

        if mode.kind == "draft":
            draft = load_draft(mode.path, engine, threads)
        else:
            from mlpdeploy.runtime.speculative.self_draft import build_self_drafter

            draft = build_self_drafter(engine, Path(mode.path), threads)
        drafter = ModelDrafter(draft, mode.kind, options.get("k", 4), options.get("cost"), target=engine)
    drafter.adaptive = adaptive
    return drafter


def load_draft(path: str, target: Engine, threads: int | None = None) -> Engine:
    """The draft artifact at `path`, checked to fit `target`: a KV cache, the same vocabulary, the same tokenizer."""
    from mlpdeploy.runtime.step import Stepper

    draft = Engine.load(path, threads=threads, session_entries=IDLE_BETWEEN_RUNS)
    if draft.cache is None:
        raise MlpdeployError(f"--speculative draft:{path}: the draft artifact has no KV cache; compile the draft model with --kv-cache")
    ours, theirs = Stepper(target).vocab, Stepper(draft).vocab
    if ours != theirs:
        raise MlpdeployError(f"--speculative draft:{path}: the draft model scores {theirs} tokens, the model {ours}; a drafter needs the same vocabulary")
    mismatch = tokenizer_mismatch(target, draft)
    if mismatch:
        raise MlpdeployError(f"--speculative draft:{path}: {mismatch}; a drafter needs the model's tokenizer")
    return draft


def tokenizer_mismatch(target: Engine, draft: Engine) -> str | None:
    """Why the two artifacts' tokenizers differ (None: the same vocabulary and special tokens)."""
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    found = []
    for engine in (target, draft):
        try:
            found.append(tokenizer_for(engine.manifest, engine.path.parent))
        except MlpdeployError:
            found.append(None)
    if found[0] is None and found[1] is None:
        return None  # token ids only on both sides: the vocabulary check is all there is
    if (found[0] is None) != (found[1] is None):
        return "only one of the two artifacts has a tokenizer, so they cannot be shown to share one"
    if type(found[0]) is not type(found[1]):
        return "the tokenizers are of different kinds"
    inner = [getattr(t, "tokenizer", None) for t in found]
    if inner[0] is not None and (inner[0].get_vocab() != inner[1].get_vocab() or inner[0].all_special_ids != inner[1].all_special_ids):
        return "its tokenizer's vocabulary differs from the model's"
    return None
