"""Data for the causal-LM objective: corpus files -> token shards (cached) -> per-rank batches.

1. ``load_corpus`` reads TinyStories as published (``.txt`` with ``<|endoftext|>`` between
   stories, ``.json`` arrays / ``.jsonl`` lines of objects with a ``story`` or ``text`` field) and
   plain text / jsonl corpora.
2. ``build_shards`` tokenizes once into one flat stream per split (an EOT after every document),
   stored as raw uint16 (uint32 for vocabularies over 65536) shard files in a directory named by a
   content hash of (texts, tokenizer, layout): a second build is a cache hit.
3. ``TokenDataset`` memory-maps a split; ``BatchSampler`` draws (x, y) batches for one
   data-parallel rank, deterministically and resumably.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import ExecutorError
from .tokenizer import EOT, Tokenizer

CORPUS_SUFFIXES = (".txt", ".json", ".jsonl")
TEXT_FIELDS = ("story", "text")  #: TinyStories names its field "story"; most corpora "text"
FORMAT_VERSION = 1  #: bump when the shard layout changes, so old caches are not reused
META = "meta.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 2**27  #: 256 MiB of uint16 per shard file
ENCODE_CHUNK_DOCS = 1024  #: documents tokenized at once (bounds the memory of Python id lists)


# ------------------------------------------------------------------------------------ reading

def _split_txt(text: str) -> list[str]:
    """TinyStories .txt: stories separated by ``<|endoftext|>`` (on its own line); a file without
    the marker is one document."""
    return [doc.strip() for doc in re.split(re.escape(EOT), text) if doc.strip()]


def _document(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for field in TEXT_FIELDS:
            if isinstance(value.get(field), str):
                return value[field]
        keys = ", ".join(sorted(map(str, value))) or "none"
        raise ExecutorError(f"{where}: no 'story' or 'text' field (keys: {keys})")
    raise ExecutorError(f"{where}: expected an object with a 'story' or 'text' field, "
                       f"got {type(value).__name__}")


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExecutorError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        docs.append(_document(value, f"{path}:{n}"))
    return docs


def _read_json(path: Path) -> list[str]:
    """TinyStories' data*.json: one array of story objects."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExecutorError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    items = value if isinstance(value, list) else [value]
    return [_document(item, f"{path}[{i}]") for i, item in enumerate(items)]


def read_corpus_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return _split_txt(path.read_text(encoding="utf-8"))
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        return _read_json(path)
    raise ExecutorError(f"{path}: unsupported corpus file (expected {', '.join(CORPUS_SUFFIXES)})")


def corpus_files(path: str | Path) -> list[Path]:
    """The file itself, or the corpus files under a directory (recursively, sorted)."""
    path = Path(path)
    if not path.exists():
        raise ExecutorError(f"{path}: no such corpus file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
    if not files:
        raise ExecutorError(f"{path}: no corpus files in the directory "
                           f"(expected {', '.join(CORPUS_SUFFIXES)})")
    return files


def load_corpus(path: str | Path) -> list[str]:
    """Documents of a corpus file or directory, in file order; empty documents are dropped."""
    docs = [d for f in corpus_files(path) for d in read_corpus_file(f) if d.strip()]
    if not docs:
        raise ExecutorError(f"{path}: the corpus has no documents")
    return docs


# ------------------------------------------------------------------------------------- shards

def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 up to 65536 tokens."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_val(doc: str, val_fraction: float) -> bool:
    """A document's split follows from its content: no ordering bias, and duplicates never
    straddle train and val."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def split_documents(docs: Sequence[str], val_fraction: float) -> dict[str, list[str]]:
    split: dict[str, list[str]] = {"train": [], "val": []}
    for doc in docs:
        split["val" if is_val(doc, val_fraction) else "train"].append(doc)
    if val_fraction > 0 and not split["val"] and len(split["train"]) > 1:
        split["val"].append(split["train"].pop())  # a tiny corpus still gets a val split
    return split


def cache_key(docs: Sequence[str], tokenizer: Tokenizer, val_fraction: float,
              shard_tokens: int) -> str:
    h = hashlib.sha256()
    header = dict(version=FORMAT_VERSION, tokenizer=tokenizer.fingerprint(),
                  dtype=token_dtype(tokenizer.vocab_size).name, val_fraction=val_fraction,
                  shard_tokens=shard_tokens)
    h.update(json.dumps(header, sort_keys=True).encode())
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


class _ShardWriter:
    """Appends token arrays to ``{split}_{i:03d}.bin`` files of at most ``shard_tokens`` each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split = directory, split
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.sizes: list[int] = []
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None or self.sizes[-1] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.sizes[-1]
            tokens[:room].astype(self.dtype).tofile(self._file)
            self.sizes[-1] += min(room, tokens.size)
            tokens = tokens[room:]

    def _open_next(self) -> None:
        self.close()
        self._file = open(self.directory / f"{self.split}_{len(self.sizes):03d}.bin", "wb")
        self.sizes.append(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _write_split(directory: Path, split: str, docs: Sequence[str], tokenizer: Tokenizer,
                 shard_tokens: int) -> dict[str, Any]:
    writer = _ShardWriter(directory, split, token_dtype(tokenizer.vocab_size), shard_tokens)
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    for start in range(0, len(docs), ENCODE_CHUNK_DOCS):
        ids = tokenizer.encode_batch(docs[start:start + ENCODE_CHUNK_DOCS])
        parts = [part for doc in ids for part in (np.asarray(doc, dtype=np.int64), eot)]
        writer.write(np.concatenate(parts))
    writer.close()
    return dict(documents=len(docs), shards=writer.sizes)


@dataclass(frozen=True)
class TokenShards:
    """A built (or found) shard directory."""

    directory: Path
    meta: dict[str, Any]
    cache_hit: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def tokens(self, split: str) -> int:
        return sum(self.meta["splits"][split]["shards"])


def build_shards(docs: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path,
                 val_fraction: float = 0.05,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS) -> TokenShards:
    """Tokenize ``docs`` into train/val shards under ``cache_dir/<content hash>/``, or reuse them.

    The directory is assembled under a temporary name and renamed into place, so an interrupted
    build is never mistaken for a cache hit and concurrent builders agree on one result.
    """
    if not docs:
        raise ExecutorError("no documents to tokenize")
    cache_dir = Path(cache_dir)
    final = cache_dir / cache_key(docs, tokenizer, val_fraction, shard_tokens)
    if (final / META).is_file():
        return TokenShards(final, json.loads((final / META).read_text()), cache_hit=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        splits = split_documents(docs, val_fraction)
        meta = dict(version=FORMAT_VERSION, dtype=token_dtype(tokenizer.vocab_size).name,
                    vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id,
                    tokenizer=tokenizer.fingerprint(),
                    splits={s: _write_split(tmp, s, splits[s], tokenizer, shard_tokens)
                            for s in SPLITS})
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, final)
    except OSError:
        if not (final / META).is_file():  # another builder did not win the rename either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenShards(final, json.loads((final / META).read_text()), cache_hit=False)


# ------------------------------------------------------------------------------------ reading

class TokenDataset:
    """One split of a shard directory as a read-only token stream (memory-mapped shards)."""

    def __init__(self, directory: str | Path, split: str = "train"):
        directory = Path(directory)
        if not (directory / META).is_file():
            raise ExecutorError(f"{directory}: not a token shard directory (no {META})")
        if split not in SPLITS:
            raise ExecutorError(f"split: unknown split {split!r} (expected {' or '.join(SPLITS)})")
        self.directory, self.split = directory, split
        self.meta = json.loads((directory / META).read_text())
        dtype = np.dtype(self.meta["dtype"])
        sizes = self.meta["splits"][split]["shards"]
        self._shards = [np.memmap(directory / f"{split}_{i:03d}.bin", dtype=dtype, mode="r",
                                  shape=(n,)) for i, n in enumerate(sizes) if n]
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def eot_id(self) -> int:
        return self.meta["eot_id"]

    def __len__(self) -> int:
        """Tokens in the split."""
        return int(self._starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside {len(self)} tokens")
        parts, pos, end = [], start, start + length
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < end:
            lo = pos - self._starts[shard]
            take = min(end - pos, len(self._shards[shard]) - lo)
            parts.append(self._shards[shard][lo:lo + take])
            pos += take
            shard += 1
        return np.concatenate(parts).astype(np.int64)


class BatchSampler:
    """(x, y) batches for one data-parallel rank; y is x shifted by one token.

    The split is cut into non-overlapping windows of ``seq_len + 1`` tokens, starting at an
    offset drawn per epoch so that epochs see different windows.  Each epoch shuffles the windows
    with a generator seeded by (seed, epoch); draw ``t`` of the epoch takes windows
    ``[t*G, (t+1)*G)`` of that order, G = micro_batch * dp_size, and rank r keeps the r-th
    ``micro_batch`` of them: ranks never share a window within a draw, and the state is just
    (epoch, draw), so a restored sampler continues with exactly the same batches.
    """

    def __init__(self, dataset: TokenDataset, seq_len: int, micro_batch: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0):
        if not 0 <= dp_rank < dp_size:
            raise ExecutorError(f"dp_rank ({dp_rank}) must be in [0, dp_size ({dp_size}))")
        self.dataset, self.seq_len, self.micro_batch = dataset, seq_len, micro_batch
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.epoch, self.draw = 0, 0
        self._order: np.ndarray | None = None
        self._offset = 0
        needed = micro_batch * dp_size * seq_len + seq_len + 1
        if len(dataset) < needed:
            raise ExecutorError(
                f"{dataset.split} split has {len(dataset)} tokens; one batch of micro_batch "
                f"({micro_batch}) x dp ({dp_size}) windows of seq_len ({seq_len}) needs {needed}")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.dp_size

    def _epoch_order(self) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        offset = int(rng.integers(self.seq_len))
        windows = (len(self.dataset) - 1 - offset) // self.seq_len
        return rng.permutation(windows), offset

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None:
            self._order, self._offset = self._epoch_order()
        if (self.draw + 1) * self.global_batch > len(self._order):
            self.epoch, self.draw = self.epoch + 1, 0  # drop the ragged end of the epoch
            self._order, self._offset = self._epoch_order()
        first = self.draw * self.global_batch + self.dp_rank * self.micro_batch
        rows = [self.dataset.window(self._offset + int(w) * self.seq_len, self.seq_len + 1)
                for w in self._order[first:first + self.micro_batch]]
        self.draw += 1
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return dict(epoch=self.epoch, draw=self.draw, seed=self.seed, seq_len=self.seq_len,
                    micro_batch=self.micro_batch, dp_size=self.dp_size, dp_rank=self.dp_rank,
                    tokens=len(self.dataset))

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``; the batch shape, dp layout and data must be the saved ones."""
        for key in ("seed", "seq_len", "micro_batch", "dp_size", "dp_rank", "tokens"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ExecutorError(f"data sampler: checkpoint has {key}={state[key]}, "
                                   f"this run has {key}={mine}")
        self.epoch, self.draw = state["epoch"], state["draw"]
        self._order = None  # the order is a function of (seed, epoch): recomputed on the next draw


__all__ = ["load_corpus", "corpus_files", "read_corpus_file", "token_dtype", "split_documents",
           "build_shards", "TokenShards", "TokenDataset", "BatchSampler"]
