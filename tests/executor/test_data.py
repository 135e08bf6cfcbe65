"""Data for the causal-LM objective (executor/stories.py, tokenizer.py, data.py): the offline
story generator, corpus parsing, both tokenizers, the shard cache and the per-rank sampler."""
import json
import re

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from executor.data import (BatchSampler, TokenDataset, build_shards, load_corpus,  # noqa: E402
                           token_dtype)
from executor.errors import ExecutorError  # noqa: E402
from executor.stories import PLOTS, generate_stories  # noqa: E402
from executor.tokenizer import (EOT, BPETokenizer, ByteTokenizer, load_tokenizer,  # noqa: E402
                                train_bpe)

STORIES = generate_stories(120, seed=0)


# -------------------------------------------------------------------------------- stories

def test_stories_are_deterministic_by_seed():
    assert generate_stories(30, seed=3) == generate_stories(30, seed=3)
    assert generate_stories(30, seed=3) != generate_stories(30, seed=4)
    assert generate_stories(10, seed=3) == generate_stories(30, seed=3)[:10]


def test_stories_vary_but_use_a_small_vocabulary():
    stories = generate_stories(400, seed=1)
    assert len(set(stories)) == len(stories)
    assert len({s.split(".")[0] for s in stories}) > 100  # many distinct openings
    words = {w.strip('.,!?"\'').lower() for s in stories for w in s.split()}
    assert 300 < len(words) < 1500
    for s in stories:
        assert "{" not in s and "}" not in s and s[-1] in '.!"', s
        assert 150 < len(s) < 1500


def _literal(template: str) -> str:
    return max(re.split(r"\{[^}]*\}", template), key=len).strip()


@pytest.mark.parametrize("plot", sorted(PLOTS))
def test_every_plot_is_told(plot):
    """Each plot's most distinctive fixed text shows up in a few hundred stories."""
    stories = " ".join(generate_stories(400, seed=1))
    literals = [_literal(t) for beat in PLOTS[plot] for t in beat if t]
    assert any(lit in stories for lit in sorted(literals, key=len, reverse=True)[:3])


# ---------------------------------------------------------------------------- corpus files

def test_tinystories_txt(tmp_path):
    path = tmp_path / "TinyStories-valid.txt"
    path.write_text("Spot saw a cat.\nThe cat ran.\n<|endoftext|>\nLily had a ball.\n"
                    "<|endoftext|>\n\n<|endoftext|>\n")
    assert load_corpus(path) == ["Spot saw a cat.\nThe cat ran.", "Lily had a ball."]


def test_tinystories_json_and_jsonl(tmp_path):
    (tmp_path / "data00.json").write_text(json.dumps([
        {"story": "One.", "instruction": {"words": ["a"]}, "summary": "s", "source": "GPT-4"},
        {"story": "Two."}]))
    (tmp_path / "extra.jsonl").write_text('{"text": "Three."}\n\n{"story": "Four."}\n')
    (tmp_path / "README.md").write_text("not a corpus file")
    assert load_corpus(tmp_path) == ["One.", "Two.", "Three.", "Four."]


def test_plain_txt_is_one_document(tmp_path):
    (tmp_path / "book.txt").write_text("Chapter one.\n\nIt was a dark night.\n")
    assert load_corpus(tmp_path / "book.txt") == ["Chapter one.\n\nIt was a dark night."]


@pytest.mark.parametrize("files, fragment", [
    ({}, "no corpus files"),
    ({"a.txt": "\n<|endoftext|>\n"}, "has no documents"),
    ({"a.jsonl": '{"text": "ok"}\n{"text": '}, "a.jsonl:2: invalid JSON"),
    ({"a.jsonl": '{"title": "x"}'}, "a.jsonl:1: no 'story' or 'text' field (keys: title)"),
    ({"a.json": "[1, 2]"}, "a.json[0]: expected an object"),
], ids=["empty-dir", "empty-corpus", "bad-json-line", "missing-field", "wrong-type"])
def test_bad_corpus_raises_planner_error(tmp_path, files, fragment):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ExecutorError, match=re.escape(fragment)):
        load_corpus(tmp_path)


def test_missing_or_unsupported_path(tmp_path):
    with pytest.raises(ExecutorError, match=re.escape(f"{tmp_path / 'nope'}: no such corpus")):
        load_corpus(tmp_path / "nope")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ExecutorError, match="data.csv: unsupported corpus file"):
        load_corpus(tmp_path / "data.csv")


# ------------------------------------------------------------------------------ tokenizers

SAMPLE = "Lily said, \"Héllo, 世界!\" 😀" + EOT + "Tom ran."


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    ids = tok.encode(SAMPLE)
    assert ids.count(256) == 1 and max(i for i in ids if i != 256) < 256
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"  # a cut UTF-8 sequence does not raise
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer) and loaded.fingerprint() == tok.fingerprint()


def test_bpe_train_save_load(tmp_path):
    tok = train_bpe(STORIES, vocab_size=400)
    assert tok.vocab_size == 400 and tok.decode([tok.eot_id]) == EOT
    assert train_bpe(STORIES, vocab_size=400).fingerprint() == tok.fingerprint()  # deterministic
    assert len(tok.encode(STORIES[0])) < len(STORIES[0].encode()) / 2  # it learned merges
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE  # byte-level: unseen characters survive
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ExecutorError, match="at least 257"):
        train_bpe(STORIES, vocab_size=100)
    with pytest.raises(ExecutorError, match="no tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(ExecutorError, match="neither a byte nor a BPE"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------- shards

class CountingTokenizer:
    """Documents of space-separated integers; every id is distinct, so a window names its start."""

    def __init__(self, vocab_size=2**16):
        self.vocab_size, self.eot_id = vocab_size, vocab_size - 1

    def encode_batch(self, texts):
        return [[int(t) for t in text.split()] for text in texts]

    def fingerprint(self):
        return f"counting-{self.vocab_size}"


def counting_docs(n_docs=40, length=50):
    return [" ".join(str(i * length + j) for j in range(length)) for i in range(n_docs)]


def test_shards_hold_the_token_stream(tmp_path):
    tok = ByteTokenizer()
    shards = build_shards(STORIES, tok, tmp_path, val_fraction=0.1, shard_tokens=5000)
    assert not shards.cache_hit and shards.dtype == np.uint16
    assert len(list(shards.directory.glob("train_*.bin"))) > 1  # several shard files
    train, val = TokenDataset(shards.directory, "train"), TokenDataset(shards.directory, "val")
    total = sum(len(tok.encode(s)) + 1 for s in STORIES)
    assert len(train) + len(val) == total and 0 < len(val) < len(train)
    stream = train.window(0, len(train))  # across shard boundaries
    text = tok.decode(stream.tolist())
    docs = [d for d in text.split(EOT) if d]
    assert stream[-1] == tok.eot_id and set(docs) < set(STORIES)
    assert len(docs) == shards.meta["splits"]["train"]["documents"]


def test_shard_cache_hit_and_miss(tmp_path):
    tok = ByteTokenizer()
    first = build_shards(STORIES, tok, tmp_path)
    again = build_shards(list(STORIES), tok, tmp_path)
    assert again.cache_hit and again.directory == first.directory
    changed = build_shards(STORIES[:-1] + [STORIES[-1] + "!"], tok, tmp_path)
    assert not changed.cache_hit and changed.directory != first.directory
    other_tok = build_shards(STORIES, train_bpe(STORIES, 300), tmp_path)
    assert not other_tok.cache_hit and other_tok.directory != first.directory
    assert not list(tmp_path.glob(".building-*"))  # no half-built directories left behind


@pytest.mark.parametrize("vocab_size, dtype", [(257, np.uint16), (2**16, np.uint16),
                                               (2**16 + 1, np.uint32), (128256, np.uint32)])
def test_token_dtype(vocab_size, dtype):
    assert token_dtype(vocab_size) == dtype


def test_large_vocab_shards_are_uint32(tmp_path):
    tok = CountingTokenizer(vocab_size=70000)
    shards = build_shards(["69998 5 69990"], tok, tmp_path, val_fraction=0)
    data = TokenDataset(shards.directory, "train")
    assert shards.dtype == np.uint32
    assert (shards.directory / "train_000.bin").stat().st_size == 4 * 4
    assert data.window(0, 4).tolist() == [69998, 5, 69990, 69999]  # uint16 would wrap these


def test_bad_shard_directory(tmp_path):
    with pytest.raises(ExecutorError, match="not a token shard directory"):
        TokenDataset(tmp_path)


# --------------------------------------------------------------------------------- sampler

@pytest.fixture
def counting(tmp_path):
    shards = build_shards(counting_docs(), CountingTokenizer(), tmp_path, val_fraction=0)
    return TokenDataset(shards.directory, "train")  # 2040 tokens, each window unique


def rows(x, y):
    """Each row as the (seq_len + 1)-token window it was cut from."""
    return [tuple(r) for r in torch.cat([x, y[:, -1:]], dim=1).tolist()]


def test_batches_are_shifted_windows(counting):
    sampler = BatchSampler(counting, seq_len=16, micro_batch=4, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = counting.window(0, len(counting))
    for row in rows(x, y):
        start = int(np.flatnonzero(stream == row[0])[0])
        assert list(row) == stream[start:start + 17].tolist()


def test_sampler_is_deterministic(counting):
    def draws(seed):
        s = BatchSampler(counting, seq_len=16, micro_batch=4, seed=seed)
        return [rows(*s.next_batch()) for _ in range(5)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_ranks_draw_disjoint_windows(counting):
    """Within one draw ranks never share a window; within an epoch no window repeats."""
    samplers = [BatchSampler(counting, 16, 4, dp_rank=r, dp_size=3, seed=0) for r in range(3)]
    per_epoch = (len(counting) - 1 - 15) // 16 // 12  # draws every offset leaves room for
    seen = set()
    for _ in range(per_epoch):
        for s in samplers:
            windows = rows(*s.next_batch())
            assert not seen & set(windows)
            seen |= set(windows)
    assert len(seen) == per_epoch * 12


@pytest.mark.parametrize("k", [0, 3, 10], ids=["start", "mid-epoch", "next-epoch"])
def test_resume_continues_with_the_same_batches(counting, k):
    sampler = BatchSampler(counting, seq_len=16, micro_batch=4, dp_rank=1, dp_size=2, seed=7)
    for _ in range(k):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a checkpoint file
    expected = [rows(*sampler.next_batch()) for _ in range(20)]  # an epoch is ~15 draws
    assert sampler.epoch >= 1
    resumed = BatchSampler(counting, seq_len=16, micro_batch=4, dp_rank=1, dp_size=2, seed=7)
    resumed.load_state_dict(state)
    assert [rows(*resumed.next_batch()) for _ in range(20)] == expected


def test_sampler_errors(counting):
    sampler = BatchSampler(counting, seq_len=16, micro_batch=4, dp_size=2)
    with pytest.raises(ExecutorError, match="checkpoint has micro_batch=8, this run has "
                                           "micro_batch=4"):
        sampler.load_state_dict({**sampler.state_dict(), "micro_batch": 8})
    with pytest.raises(ExecutorError, match=r"dp_rank \(2\) must be in \[0, dp_size \(2\)\)"):
        BatchSampler(counting, 16, 4, dp_rank=2, dp_size=2)
    with pytest.raises(ExecutorError, match="train split has 2040 tokens"):
        BatchSampler(counting, seq_len=256, micro_batch=4, dp_size=2)
