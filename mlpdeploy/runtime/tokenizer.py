"""Text ↔ token ids for `mlpdeploy generate`: bytes for the zoo's byte-level models, the saved
tokenizer for a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from mlpdeploy.errors import MlpdeployError, require
from mlpdeploy.model.manifest import Manifest


class ByteTokenizer:
    """Token = byte (vocab 256), as the zoo's language models were trained (stdlib-bytes)."""

    eos_token_id = None

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

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def tokenizer_for(manifest: Manifest):
    """The tokenizer of the model a manifest was exported from, or a one-line error."""
    from mlpdeploy.model.zoo import ZOO

    if manifest.source in ZOO:
        ids = next((s for s in manifest.inputs if s.name == "input_ids"), None)
        if ids is not None and ids.high == 256:
            return ByteTokenizer()
    source = Path(manifest.source)
    if manifest.kind == "hf" and source.is_dir():
        return HFTokenizer(source)
    raise MlpdeployError(f"no tokenizer known for {manifest.source}; pass token ids with --prompt-ids instead of --prompt")
