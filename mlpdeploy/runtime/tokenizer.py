"""Text ↔ token ids for `mlpdeploy generate` and `serve`: bytes for the zoo's byte-level models,
the saved tokenizer (and its chat template) for a Hugging Face directory.

A compile output directory carries a copy of the source's tokenizer files
(`copy_tokenizer_files`), so an artifact moved to another machine still has its tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mlpdeploy.errors import MlpdeployError, require
from mlpdeploy.model.manifest import Manifest
from mlpdeploy.model.tokenize import chat_template_ids, stop_token_ids

# What a Hugging Face directory's tokenizer and chat template are made of (all optional but one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                   "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class ByteTokenizer:
    """Token = byte (vocab 256), as the zoo's language models were trained (stdlib-bytes)."""

    eos_token_id = None
    stop_token_ids: tuple[int, ...] = ()
    has_chat_template = False

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer saved in the model's directory."""

    def __init__(self, directory: Path):
        transformers = require("transformers", "hf", "the tokenizer of a Hugging Face model directory")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:
            raise MlpdeployError(f"{directory} has no tokenizer transformers can load ({type(exc).__name__}); save one with the model") from None
        self.eos_token_id = self.tokenizer.eos_token_id
        self.stop_token_ids = stop_token_ids(directory, self.eos_token_id)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_chat(self, messages: list[Message]) -> list[int]:
        """Token ids of `messages` in the tokenizer's chat template, ending with the assistant's turn."""
        if not self.has_chat_template:
            raise MlpdeployError("this model's tokenizer has no chat template; send plain text (--no-chat)")
        return chat_template_ids(self.tokenizer, messages)


def chat_messages(prompt: str, system: str | None = None) -> list[Message]:
    """One user turn, after a system turn when `system` is given."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def check_messages(messages) -> list[Message]:
    """`messages` as chat turns ({"role", "content"} strings), or a one-line error."""
    if not isinstance(messages, list) or not messages:
        raise MlpdeployError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"} or not all(isinstance(v, str) for v in message.values()):
            raise MlpdeployError(f"message {i} must be an object with string 'role' and 'content' and nothing else")
    return messages


def copy_tokenizer_files(source: Path, destination: Path) -> list[Path]:
    """Copy a Hugging Face directory's tokenizer files (and chat template, generation config) into `destination`."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            copied.append(Path(shutil.copyfile(Path(source) / name, Path(destination) / name)))
    return copied


def has_tokenizer_files(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()


def tokenizer_for(manifest: Manifest, artifact_dir: Path | None = None):
    """The tokenizer of the model a manifest was exported from — the copy beside the artifact
    first, else the source directory — or a one-line error."""
    from mlpdeploy.model.zoo import ZOO

    if manifest.source in ZOO:
        ids = next((s for s in manifest.inputs if s.name == "input_ids"), None)
        if ids is not None and ids.high == 256:
            return ByteTokenizer()
    if manifest.kind == "hf":
        for directory in ([Path(artifact_dir)] if artifact_dir is not None else []) + [Path(manifest.source)]:
            if directory.is_dir() and has_tokenizer_files(directory):
                return HFTokenizer(directory)
    raise MlpdeployError(f"no tokenizer known for {manifest.source}; pass token ids with --prompt-ids instead of --prompt")
