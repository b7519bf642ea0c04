"""A user's text as documents, and the split of documents into calibration and held-out evaluation.

What `--data` reads as text:

* a `.txt`, `.md` or `.py` file: one document;
* a `.jsonl` file: one document per line, a JSON object with a `text` string (other fields ignored);
* a directory: every `.txt`/`.md`/`.py`/`.jsonl` file below it (hidden ones skipped), in sorted order.

Identical documents are kept once (so the same text can never land in both splits). When fewer than
`MIN_DOCUMENTS` remain (a single file, say), every document is cut into chunks of about
`CHUNK_CHARS` characters at blank lines (at line ends when a paragraph is longer still) and the
chunks are the documents.

`split_documents` holds out 1 in `EVAL_EVERY` documents (at least one, never all): those whose
SHA-256 is smallest. It depends on the documents' contents only, not on their order or file names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.errors import MlpdeployError

TEXT_SUFFIXES = (".txt", ".md", ".py")
JSONL_SUFFIX = ".jsonl"
MIN_DOCUMENTS = 5
CHUNK_CHARS = 4000
EVAL_EVERY = 5


@dataclass(frozen=True)
class TextData:
    """Documents read from `path` (deduplicated, in reading order), the files they came from and
    their SHA-256: a file's own, or for a folder one over its text files' relative paths and digests."""

    path: Path
    documents: tuple[str, ...]
    files: tuple[Path, ...]
    sha256: str
    chunked: bool  # documents are chunks (fewer than MIN_DOCUMENTS were given)


def text_files(path: Path) -> list[Path]:
    """The text files `--data` reads under a directory: sorted, hidden files and folders skipped."""
    found = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file():
            continue
        if file.suffix.lower() in (*TEXT_SUFFIXES, JSONL_SUFFIX):
            found.append(file)
    return found


def _decode(file: Path, raw: bytes) -> str:
    if b"\0" in raw:
        raise MlpdeployError(f"{file} is binary, not text; --data text must be UTF-8 .txt/.md/.py or .jsonl with a \"text\" field")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MlpdeployError(f"{file} is not UTF-8 text (byte {exc.start}); --data text must be UTF-8: convert it (iconv -t utf-8)") from None


def _jsonl_documents(file: Path, text: str) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise MlpdeployError(f"{file} line {number}: not a JSON object with a \"text\" string; each .jsonl line must be {{\"text\": \"...\"}}")
        docs.append(record["text"])
    return docs


def read_text_data(path: Path | str) -> TextData:
    """The documents of a text file, `.jsonl` file or directory of them (see the module docstring)."""
    path = Path(path)
    files = text_files(path) if path.is_dir() else [path]
    if not files:
        raise MlpdeployError(f"{path} holds no usable files: --data takes .txt/.md/.py/.jsonl files, a folder of them, "
                             "a folder of image class folders, or .npz/.json arrays")
    digest = hashlib.sha256()
    docs: list[str] = []
    for file in files:
        raw = file.read_bytes()
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0" + hashlib.sha256(raw).digest())
        else:
            digest.update(raw)  # a file's digest is what sha256sum prints
        text = _decode(file, raw)
        docs.extend(_jsonl_documents(file, text) if file.suffix.lower() == JSONL_SUFFIX else [text])
    docs = list(dict.fromkeys(d for d in docs if d.strip()))
    if not docs:
        raise MlpdeployError(f"{path} is empty: no text in {'its files' if path.is_dir() else 'it'}; --data needs text to calibrate and evaluate on")
    chunked = len(docs) < MIN_DOCUMENTS
    if chunked:
        docs = list(dict.fromkeys(c for d in docs for c in chunk_document(d) if c.strip()))
    return TextData(path, tuple(docs), tuple(files), digest.hexdigest(), chunked)


def chunk_document(text: str, chars: int = CHUNK_CHARS) -> list[str]:
    """`text` cut into consecutive chunks of about `chars` characters: after a blank line once a chunk
    holds `chars`, at a line end once it holds 2 × `chars`. Joined, the chunks are `text`."""
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if (size >= chars and not line.strip()) or size >= 2 * chars:
            chunks.append("".join(current))
            current, size = [], 0
    if current:
        chunks.append("".join(current))
    return chunks


def document_key(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def split_documents(documents: list[str] | tuple[str, ...], eval_every: int = EVAL_EVERY) -> tuple[list[int], list[int]]:
    """(calibration indices, held-out indices) into `documents` (distinct), each list in the given order.

    The held-out documents are the `max(1, n // eval_every)` with the smallest SHA-256; needs n ≥ 2.
    """
    n = len(documents)
    if n < 2:
        raise MlpdeployError(f"the text holds {n} document(s) after splitting; calibration and held-out evaluation need at least 2: give more text")
    ranked = sorted(range(n), key=lambda i: document_key(documents[i]))
    held_out = set(ranked[:max(1, n // eval_every)])
    return [i for i in range(n) if i not in held_out], [i for i in range(n) if i in held_out]
