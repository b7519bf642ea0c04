"""The model's own tokenizer for `--data` text: Hugging Face tokenizer files in the model directory,
or bytes (token = UTF-8 byte) for byte-level models such as the zoo's (vocab 256)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlpdeploy.errors import MlpdeployError, first_line, require
from mlpdeploy.model.bundle import ModelBundle

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
BYTE_VOCAB = 256


@dataclass
class TextTokenizer:
    """`encode(text)` gives token ids without special tokens; a document is `prefix + ids + suffix`
    (the special tokens the tokenizer itself adds, e.g. BERT's [CLS] … [SEP])."""

    name: str
    encode: Callable[[str], list[int]] = field(repr=False)
    prefix: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)
    eos: int | None = None
    pad: int = 0

    def document(self, text: str) -> list[int]:
        """A whole document as the model sees it: its specials around it; else ended by EOS, if any."""
        ids = self.encode(text)
        if self.prefix or self.suffix:
            return self.prefix + ids + self.suffix
        return ids + ([self.eos] if self.eos is not None else [])


def byte_tokenizer() -> TextTokenizer:
    """Token = byte of the UTF-8 text (the zoo's language models)."""
    return TextTokenizer("bytes", lambda text: list(text.encode("utf-8")))


def model_directory(bundle: ModelBundle) -> Path | None:
    """The Hugging Face directory a bundle was loaded from, if any."""
    return Path(bundle.source) if bundle.kind == "hf" and Path(bundle.source).is_dir() else None


def hf_tokenizer(directory: Path) -> TextTokenizer:
    """The tokenizer saved in a Hugging Face model directory (transformers' AutoTokenizer, offline)."""
    transformers = require("transformers", "hf", "tokenizing --data text")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise MlpdeployError(f"cannot load the tokenizer in {directory}: {first_line(exc)}; save it there with tokenizer.save_pretrained") from None
    tok.model_max_length = 1 << 62  # whole documents are tokenized, then cut into windows: no "longer than" warning
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    prefix, suffix = list(full[:at]), list(full[at + len(plain):])
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    return TextTokenizer(f"{type(tok).__name__} ({directory})", encode, prefix, suffix, tok.eos_token_id, int(pad))


def load_tokenizer(bundle: ModelBundle) -> TextTokenizer:
    """The model's own tokenizer: HF tokenizer files beside its weights, else bytes for a vocab of 256."""
    directory = model_directory(bundle)
    if directory is not None and any((directory / f).exists() for f in TOKENIZER_FILES):
        return hf_tokenizer(directory)
    ids = next((s for s in bundle.inputs if s.name == "input_ids"), None)
    if ids is not None and ids.high == BYTE_VOCAB:
        return byte_tokenizer()
    where = f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})" if directory else f"{bundle.source} has no tokenizer"
    raise MlpdeployError(f"{where}, so --data text cannot be tokenized; save the model's tokenizer beside it "
                         "(tokenizer.save_pretrained(DIR)), or pass token ids as --data FILE.npz")


def stop_token_ids(directory: Path, eos: int | None) -> tuple[int, ...]:
    """The end-of-sequence ids: the tokenizer's, and those generation_config.json lists."""
    ids = [] if eos is None else [eos]
    config = directory / "generation_config.json"
    if config.is_file():
        listed = json.loads(config.read_text()).get("eos_token_id")
        for token in listed if isinstance(listed, list) else [] if listed is None else [listed]:
            if token not in ids:
                ids.append(int(token))
    return tuple(ids)


def chat_template_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of chat `messages` in a transformers tokenizer's chat template, ending with the
    assistant's turn (what `generate` and `serve` feed the model; one-line error for a template
    that rejects them)."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja errors: a template that rejects these roles
        raise MlpdeployError(f"the chat template rejects these messages: {type(exc).__name__}: {exc}") from None
    return list(tokenizer.encode(text, add_special_tokens=False))


@dataclass
class ChatEncoder:
    """A Hugging Face directory's chat template as `generate` applies it, for text from a prompt."""

    encode: Callable[[str], list[int]]  # one user turn → ids ending with the assistant's turn
    decode: Callable[[list[int]], str]
    stop_ids: tuple[int, ...]
    pad: int


def chat_encoder(bundle: ModelBundle) -> ChatEncoder | None:
    """The chat encoder of a Hugging Face model whose tokenizer has a chat template, else None."""
    directory = model_directory(bundle)
    if directory is None or not any((directory / f).exists() for f in TOKENIZER_FILES):
        return None
    transformers = require("transformers", "hf", "the chat template of a Hugging Face model directory")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise MlpdeployError(f"cannot load the tokenizer in {directory}: {first_line(exc)}") from None
    if not getattr(tok, "chat_template", None):
        return None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return ChatEncoder(lambda text: chat_template_ids(tok, [{"role": "user", "content": text}]), tok.decode,
                       stop_token_ids(directory, tok.eos_token_id), int(pad))
