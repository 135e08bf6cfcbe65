"""Tokenizers the executor trains with: raw bytes, or a byte-level BPE trained on the corpus.

Both map text to ids and back, mark document ends with ``<|endoftext|>``, and save to / load
from a directory that travels with the run (``tokenizer.json`` in it; ``load_tokenizer`` tells
the two kinds apart).  ``fingerprint()`` identifies the exact vocabulary, so token shards cached
under it are never reused with another tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from .errors import ExecutorError

EOT = "<|endoftext|>"
SPECIAL_TOKENS = (EOT,)
FILENAME = "tokenizer.json"
BYTE_KIND = "byte"


class Tokenizer(Protocol):
    """What the data pipeline and the sampler need from a tokenizer."""

    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def fingerprint(self) -> str: ...
    def save(self, directory: str | Path) -> Path: ...


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ByteTokenizer:
    """UTF-8 bytes are ids 0-255; special tokens follow (``<|endoftext|>`` is 256)."""

    def __init__(self, special_tokens: Sequence[str] = SPECIAL_TOKENS):
        self.special_tokens = tuple(special_tokens)
        self._special_ids = {tok: 256 + i for i, tok in enumerate(self.special_tokens)}
        self._split = re.compile("(" + "|".join(map(re.escape, self.special_tokens)) + ")")
        self.vocab_size = 256 + len(self.special_tokens)
        self.eot_id = self._special_ids[EOT]

    def encode(self, text: str) -> list[int]:
        """Special-token strings in the text become their ids, as in the BPE tokenizer."""
        ids: list[int] = []
        for piece in self._split.split(text):
            special = self._special_ids.get(piece)
            ids.extend([special] if special is not None else piece.encode("utf-8"))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Invalid UTF-8 (a sampled model can emit it) decodes to U+FFFD."""
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self.special_tokens[i - 256])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"kind": BYTE_KIND, "special_tokens": list(self.special_tokens)})

    def fingerprint(self) -> str:
        return _sha256(self.to_json())

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ByteTokenizer":
        data = _read_json(Path(directory) / FILENAME)
        if data.get("kind") != BYTE_KIND:
            raise ExecutorError(f"{Path(directory) / FILENAME}: not a byte tokenizer")
        return cls(data["special_tokens"])


class BPETokenizer:
    """A byte-level BPE (GPT-2's scheme, Radford et al. 2019) held by HF ``tokenizers``."""

    def __init__(self, tokenizer):  # a tokenizers.Tokenizer
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        eot = tokenizer.token_to_id(EOT)
        if eot is None:
            raise ExecutorError(f"BPE tokenizer has no {EOT} token")
        self.eot_id = eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        return _sha256(self._tok.to_str())

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(directory) / FILENAME
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ExecutorError(f"{path}: cannot load the BPE tokenizer ({exc})") from None


def train_bpe(texts: Sequence[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE on ``texts``: 256 byte symbols, ``<|endoftext|>``, then merges up to
    ``vocab_size`` (fewer when the corpus runs out of pairs).  Deterministic for the same texts."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ExecutorError(f"BPE vocab_size ({vocab_size}) must be at least {floor} "
                           f"(256 bytes + {len(SPECIAL_TOKENS)} special token)")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return BPETokenizer(tok)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ExecutorError(f"{path}: no tokenizer file (a saved tokenizer has {FILENAME})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExecutorError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None


def load_tokenizer(directory: str | Path) -> ByteTokenizer | BPETokenizer:
    """The tokenizer saved in ``directory``, of whichever kind it is."""
    data = _read_json(Path(directory) / FILENAME)
    if data.get("kind") == BYTE_KIND:
        return ByteTokenizer.load(directory)
    if data.get("model", {}).get("type") == "BPE":
        return BPETokenizer.load(directory)
    raise ExecutorError(f"{Path(directory) / FILENAME}: neither a byte nor a BPE tokenizer")


__all__ = ["Tokenizer", "ByteTokenizer", "BPETokenizer", "train_bpe", "load_tokenizer", "EOT"]
