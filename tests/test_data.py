"""The data pipeline as the training loop uses it: sources -> tokenize_corpus (cached) -> PackedSequences ->
SequenceLoader batches. Tokens are checked against a hand tokenization, packing against a hand-made corpus whose
token ids are their own positions (so a window's first id says which window it is)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from hybridize import HybridForCausalLM
from hybridize.data import Batch, PackedSequences, SequenceLoader, TokenizedCorpus, packing, tokenize_corpus
from hybridize.data.token_cache import read_entry
from hybridize.data.tokenizer import train_bpe_tokenizer
from conftest import assert_close, tiny_config

DOCS = [
    "The cat sat on the mat.\n",
    "A dog barked twice; the cat did not care.",
    "Über naïve café: unicode, too.",
    "Line one\nline two\n\nline four",
]
TRAIN_TEXTS = DOCS + ["the quick brown fox jumps over the lazy dog"] * 3


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HYBRIDIZE_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TRAIN_TEXTS, 300)


def hand_tokenize(tok, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, doc_starts) the slow obvious way: one document at a time, EOS after each."""
    ids = [tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for doc in docs]
    return np.concatenate(ids).astype(np.uint32), np.cumsum([0] + [len(x) for x in ids], dtype=np.int64)


def assert_corpus(corpus: TokenizedCorpus, tokens: np.ndarray, doc_starts: np.ndarray) -> None:
    assert corpus.tokens.dtype == np.uint32 and corpus.doc_starts.dtype == np.int64
    np.testing.assert_array_equal(corpus.tokens, tokens)
    np.testing.assert_array_equal(corpus.doc_starts, doc_starts)


def entries(cache) -> list:
    return sorted((cache / "tokens").iterdir()) if (cache / "tokens").exists() else []


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_parquet(path, column: str, values) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: values}), path)
    return str(path)


def count_reads(monkeypatch) -> list[int]:
    """Spy on the documents tokenize_corpus reads: returns [number of documents yielded so far]."""
    read = [0]
    real = packing.iter_documents

    def spy(spec):
        for doc in real(spec):
            read[0] += 1
            yield doc

    monkeypatch.setattr(packing, "iter_documents", spy)
    return read


# Sources -> tokens

def _text_file(tmp):
    (tmp / "one.txt").write_text(DOCS[0], encoding="utf-8")
    return str(tmp / "one.txt"), DOCS[:1]


def _folder(tmp):
    (tmp / "d" / "sub").mkdir(parents=True)
    (tmp / "d" / "b.txt").write_text(DOCS[1], encoding="utf-8")
    (tmp / "d" / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (tmp / "d" / "sub" / "c.md").write_text(DOCS[2], encoding="utf-8")
    (tmp / "d" / "empty.txt").write_text("  \n", encoding="utf-8")  # whitespace only: no document
    (tmp / "d" / ".hidden").write_text("not data", encoding="utf-8")  # dot files are skipped
    return str(tmp / "d"), DOCS[:3]  # sorted path order: a.txt, b.txt, sub/c.md


def _jsonl(tmp):
    records = [{"text": DOCS[0], "id": 1}, "", {"text": "   "}, {"text": DOCS[1]}, {"text": DOCS[3]}]
    return write_jsonl(tmp / "d.jsonl", records), [DOCS[0], DOCS[1], DOCS[3]]


def _parquet(tmp):
    return write_parquet(tmp / "d.parquet", "text", [DOCS[2], None, "", DOCS[0]]), [DOCS[2], DOCS[0]]


def _mixed_list(tmp):
    jsonl, jsonl_docs = _jsonl(tmp)
    text, text_docs = _text_file(tmp)
    return [jsonl, text], jsonl_docs + text_docs  # read in the order given


@pytest.mark.parametrize("make", [_text_file, _folder, _jsonl, _parquet, _mixed_list])
@pytest.mark.parametrize("use_cache", [True, False])
def test_every_source_format_tokenizes_like_by_hand(tmp_path, tok, cache, make, use_cache):
    spec, docs = make(tmp_path)
    corpus = tokenize_corpus(spec, tok, cache=use_cache)
    assert_corpus(corpus, *hand_tokenize(tok, docs))
    assert corpus.num_documents == len(docs)
    assert len(entries(cache)) == int(use_cache)


def _missing(tmp):
    return str(tmp / "nope.jsonl")


def _bad_json(tmp):
    return write_jsonl(tmp / "bad.jsonl", [{"text": "fine"}, '{"text": "unterminated'])


def _no_text_field(tmp):
    return write_jsonl(tmp / "bad.jsonl", [{"body": "x"}])


def _text_not_string(tmp):
    return write_jsonl(tmp / "bad.jsonl", [{"text": "fine"}, {"text": 7}])


def _not_utf8(tmp):
    (tmp / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return str(tmp / "latin1.txt")


def _corrupt_parquet(tmp):
    (tmp / "bad.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return str(tmp / "bad.parquet")


def _parquet_without_text(tmp):
    return write_parquet(tmp / "bad.parquet", "content", ["x"])


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _only_blank_documents(tmp):
    return write_jsonl(tmp / "blank.jsonl", [{"text": " "}, {"text": "\n"}])


@pytest.mark.parametrize("make, error, message", [
    (_missing, FileNotFoundError, r"data source not found: .*nope\.jsonl"),
    (_bad_json, ValueError, r"bad\.jsonl:2: not valid JSON"),
    (_no_text_field, ValueError, r"bad\.jsonl:1: expected an object with a 'text' field, found \['body'\]"),
    (_text_not_string, ValueError, r"bad\.jsonl:2: 'text' must be a string, got int"),
    (_not_utf8, ValueError, r"latin1\.txt is not UTF-8 text"),
    (_corrupt_parquet, ValueError, r"bad\.parquet is not a readable parquet file"),
    (_parquet_without_text, ValueError, r"bad\.parquet has no 'text' column; columns: \['content'\]"),
    (_empty_folder, ValueError, r"data folder .*empty holds no files"),
    (_only_blank_documents, ValueError, r"holds no documents"),
    (lambda tmp: [], ValueError, r"no data sources given"),
])
@pytest.mark.parametrize("use_cache", [True, False])
def test_bad_sources_raise_errors_that_name_the_problem(tmp_path, tok, cache, make, error, message, use_cache):
    with pytest.raises(error, match=message):
        tokenize_corpus(make(tmp_path), tok, cache=use_cache)
    assert entries(cache) == []


def test_a_dataset_name_without_the_datasets_package_says_so(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if it were not installed
    with pytest.raises(FileNotFoundError, match=r"some_corpus .*`datasets` package is not installed"):
        tokenize_corpus("some_corpus", tok)


def test_builtin_corpus_is_the_default_source(tok, monkeypatch):
    monkeypatch.setattr("hybridize.data.sources.builtin_corpus", lambda: tuple(DOCS))  # the real one takes ~10 s
    for spec in (None, "builtin"):
        assert_corpus(tokenize_corpus(spec, tok), *hand_tokenize(tok, DOCS))


def test_builtin_train_and_heldout_split_the_corpus(tok, monkeypatch):
    """Two disjoint parts that together are the corpus, chosen by each document's own text (not its position), readable
    as data specs and cached apart from the whole corpus; an unknown part is refused, naming the allowed ones."""
    from hybridize.data import sources

    docs = tuple(f"document {i}: " + "word " * (i % 7 + 1) for i in range(400))
    monkeypatch.setattr(sources, "builtin_corpus", lambda: docs)
    train, heldout = sources.builtin_split("train"), sources.builtin_split("heldout")
    assert set(train).isdisjoint(heldout) and len(train) + len(heldout) == len(docs)
    assert 0.07 < len(heldout) / len(docs) < 0.19  # one in eight, by hash
    monkeypatch.setattr(sources, "builtin_corpus", lambda: docs[::-1])  # the order does not move a document
    assert set(sources.builtin_split("heldout")) == set(heldout)
    assert list(sources.iter_documents("builtin:heldout")) == list(heldout[::-1])
    assert list(sources.iter_documents(["builtin:train"])) == list(train[::-1])
    assert_corpus(tokenize_corpus("builtin:heldout", tok), *hand_tokenize(tok, heldout[::-1]))
    with pytest.raises(ValueError, match=r"unknown part of the built-in corpus 'builtin:test'.*builtin:heldout"):
        list(sources.iter_documents("builtin:test"))
    with pytest.raises(ValueError, match="'train' and 'heldout'"):
        sources.builtin_split("dev")


def test_stdlib_code_splits_by_module_with_the_builtin_corpus():
    """The stdlib's source (the real one, ~10 s to build, then cached) is several times the built-in corpus, and its
    split follows the modules' docstring documents: training on builtin:train + stdlib-code:train leaves every
    document of builtin:heldout unseen, in either form. The teacher's default held-out text says so."""
    from hybridize.data import sources
    from hybridize.teacher.train import default_eval_data

    code, docs = sources.stdlib_code(), sources.builtin_corpus()
    assert sum(len(c) for c, _ in code) > 4 * sum(map(len, docs))
    train, heldout = sources.stdlib_code_split("train"), sources.stdlib_code_split("heldout")
    assert len(train) + len(heldout) == len(code) and heldout and set(train).isdisjoint(heldout)
    assert list(sources.iter_documents("stdlib-code:heldout")) == list(heldout)
    assert list(sources.iter_documents("stdlib-code")) == [c for c, _ in code]
    held_docs = set(sources.builtin_split("heldout"))
    paired = 0
    for _, source, doc in sources._stdlib_modules():
        if doc is not None:
            assert (doc in held_docs) == (source in heldout), "a module's docstrings and source in different parts"
            paired += doc in held_docs
    assert paired > 20  # the held-out modules (66 held-out documents on 3.11, some of them pydoc topics)
    with pytest.raises(ValueError, match=r"unknown part of the stdlib code 'stdlib-code:test'.*stdlib-code:heldout"):
        list(sources.iter_documents("stdlib-code:test"))
    assert default_eval_data(["builtin:train", "stdlib-code:train"]) == "builtin:heldout"
    assert default_eval_data("builtin:train") == "builtin:heldout"
    for seen in (["builtin:train", "stdlib-code"], "builtin", None, ["builtin:train", "stdlib-code:heldout"]):
        assert default_eval_data(seen) is None, seen


def _without_eos(tok):
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()))


@pytest.mark.parametrize("make, message", [
    (_without_eos, r"no eos_token_id"),
    (lambda tok: object(), r"tokenizer must be a fast .* got object"),
])
def test_tokenizer_without_eos_or_backend_is_refused(tmp_path, tok, make, message):
    spec, _ = _text_file(tmp_path)
    with pytest.raises(ValueError, match=message):
        tokenize_corpus(spec, make(tok))


def test_truncation_left_on_the_tokenizer_does_not_cut_documents(tmp_path):
    user_tok = train_bpe_tokenizer(TRAIN_TEXTS, 300)
    spec, docs = _jsonl(tmp_path)
    expected = hand_tokenize(user_tok, docs)
    user_tok(DOCS[1], truncation=True, max_length=3)  # transformers leaves this truncation on in the backend
    assert user_tok.backend_tokenizer.truncation is not None
    assert_corpus(tokenize_corpus(spec, user_tok), *expected)
    assert user_tok.backend_tokenizer.truncation is not None  # the user's tokenizer is left as it was


@pytest.mark.parametrize("max_tokens", [1, 17, 10**9])
def test_max_tokens_keeps_exactly_that_many_and_stops_reading(tmp_path, tok, cache, monkeypatch, max_tokens):
    docs = [f"document {i}: {DOCS[i % 4]}" for i in range(3000)]
    spec = write_jsonl(tmp_path / "many.jsonl", [{"text": d} for d in docs])
    tokens, doc_starts = hand_tokenize(tok, docs)
    read = count_reads(monkeypatch)
    corpus = tokenize_corpus(spec, tok, max_tokens=max_tokens)
    n = min(max_tokens, len(tokens))
    assert_corpus(corpus, tokens[:n], np.append(doc_starts[doc_starts < n], n))
    if max_tokens < len(tokens):
        assert read[0] <= packing.BATCH_DOCUMENTS < len(docs)  # one batch of documents, not the whole file


@pytest.mark.parametrize("max_tokens", [0, -5, 2.5, True])
def test_max_tokens_must_be_positive(tmp_path, tok, max_tokens):
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        tokenize_corpus(_text_file(tmp_path)[0], tok, max_tokens=max_tokens)


def test_documents_containing_eos_text_keep_their_boundaries(tmp_path, tok):
    docs = ["before <|endoftext|> after", DOCS[0]]  # special-token text is read as the token, like tok(text) does
    spec = write_jsonl(tmp_path / "eos.jsonl", [{"text": d} for d in docs])
    corpus = tokenize_corpus(spec, tok)
    assert_corpus(corpus, *hand_tokenize(tok, docs))
    assert corpus.num_documents == 2


# The cache

def test_cache_is_reused_without_reading_the_sources(tmp_path, tok, cache, monkeypatch):
    spec, docs = _folder(tmp_path)
    read = count_reads(monkeypatch)
    first = tokenize_corpus(spec, tok)
    assert read[0] == len(docs)
    second = tokenize_corpus(spec, tok)
    assert read[0] == len(docs)  # nothing read or tokenized the second time
    assert isinstance(second.tokens, np.memmap) and isinstance(second.doc_starts, np.memmap)
    assert_corpus(second, first.tokens, first.doc_starts)
    assert len(entries(cache)) == 1


def test_cache_false_neither_reads_nor_writes_the_cache(tmp_path, tok, cache, monkeypatch):
    spec, docs = _jsonl(tmp_path)
    tokenize_corpus(spec, tok)
    read = count_reads(monkeypatch)
    tokenize_corpus(spec, tok, cache=False)
    assert read[0] == len(docs) and len(entries(cache)) == 1


def test_a_changed_file_invalidates_the_cache(tmp_path, tok, cache):
    spec, _ = _jsonl(tmp_path)
    tokenize_corpus(spec, tok)
    write_jsonl(tmp_path / "d.jsonl", [{"text": DOCS[2]}])
    assert_corpus(tokenize_corpus(spec, tok), *hand_tokenize(tok, [DOCS[2]]))
    assert len(entries(cache)) == 2


def test_a_file_added_to_a_folder_invalidates_the_cache(tmp_path, tok):
    spec, docs = _folder(tmp_path)
    tokenize_corpus(spec, tok)
    (tmp_path / "d" / "sub" / "z.txt").write_text(DOCS[3], encoding="utf-8")
    assert_corpus(tokenize_corpus(spec, tok), *hand_tokenize(tok, docs + [DOCS[3]]))


def test_tokenizer_and_max_tokens_are_part_of_the_key(tmp_path, tok, cache):
    spec, docs = _jsonl(tmp_path)
    other = train_bpe_tokenizer(TRAIN_TEXTS, 270)
    tokenize_corpus(spec, tok)
    assert_corpus(tokenize_corpus(spec, other), *hand_tokenize(other, docs))
    assert len(tokenize_corpus(spec, tok, max_tokens=5).tokens) == 5
    assert len(entries(cache)) == 3


def _truncate_tokens(entry):
    data = (entry / "tokens.npy").read_bytes()
    (entry / "tokens.npy").write_bytes(data[: len(data) - 8])


def _delete_doc_starts(entry):
    (entry / "doc_starts.npy").unlink()


def _garbage_meta(entry):
    (entry / "meta.json").write_text("{not json", encoding="utf-8")


def _wrong_offsets(entry):
    starts = np.load(entry / "doc_starts.npy")
    np.save(entry / "doc_starts.npy", starts[::-1].copy())  # right length and dtype, offsets nonsense


@pytest.mark.parametrize("damage", [_truncate_tokens, _delete_doc_starts, _garbage_meta, _wrong_offsets])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, tok, cache, monkeypatch, damage):
    spec, docs = _jsonl(tmp_path)
    tokenize_corpus(spec, tok)
    (entry,) = entries(cache)
    damage(entry)
    read = count_reads(monkeypatch)
    assert_corpus(tokenize_corpus(spec, tok), *hand_tokenize(tok, docs))
    assert read[0] == len(docs)  # tokenized again
    assert entries(cache) == [entry] and read_entry(entry) is not None


def test_a_crash_while_writing_leaves_no_entry(tmp_path, tok, cache, monkeypatch):
    from hybridize.data import token_cache

    spec, docs = _jsonl(tmp_path)
    real_save = token_cache._save_synced

    def crash_on_second_file(path, array):
        if path.name == "doc_starts.npy":
            raise RuntimeError("simulated crash")
        real_save(path, array)

    monkeypatch.setattr(token_cache, "_save_synced", crash_on_second_file)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tokenize_corpus(spec, tok)
    assert entries(cache) == []  # neither the temp folder nor a half entry
    monkeypatch.setattr(token_cache, "_save_synced", real_save)
    assert_corpus(tokenize_corpus(spec, tok), *hand_tokenize(tok, docs))
    assert len(entries(cache)) == 1


def test_an_unwritable_cache_warns_and_still_returns_the_tokens(tmp_path, tok, monkeypatch):
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    monkeypatch.setenv("HYBRIDIZE_CACHE", str(tmp_path / "a_file"))  # no folder can be made below a file
    spec, docs = _jsonl(tmp_path)
    with pytest.warns(UserWarning, match="could not cache tokens"):
        corpus = tokenize_corpus(spec, tok)
    assert_corpus(corpus, *hand_tokenize(tok, docs))


# Packing

def corpus_of(doc_lengths: list[int]) -> TokenizedCorpus:
    """A corpus whose token ids are their positions: tokens = 0, 1, ..., N - 1."""
    starts = np.cumsum([0] + doc_lengths, dtype=np.int64)
    return TokenizedCorpus(np.arange(starts[-1], dtype=np.uint32), starts)


@pytest.mark.parametrize("seq_len, doc_lens", [
    (4, [[3, 1], [4], [2, 2], [4]]),  # documents [0:3] [3:8] [8:10] [10:16]
    (5, [[3, 2], [3, 2], [5]]),  # the trailing 16th token is dropped
    (16, [[3, 5, 2, 6]]),
    (1, [[1]] * 16),
])
def test_windows_and_their_document_pieces(seq_len, doc_lens):
    seqs = PackedSequences(corpus_of([3, 5, 2, 6]), seq_len)
    assert len(seqs) == len(doc_lens)
    for i, expected in enumerate(doc_lens):
        ids, lens = seqs[i]
        assert ids.dtype == torch.long and lens.dtype == torch.long
        assert ids.tolist() == list(range(i * seq_len, (i + 1) * seq_len))
        assert lens.tolist() == expected
    assert seqs[-1][0].tolist() == seqs[len(seqs) - 1][0].tolist()
    with pytest.raises(IndexError, match="out of range"):
        seqs[len(seqs)]


def test_too_short_corpus_names_both_numbers():
    with pytest.raises(ValueError, match=r"the corpus has 16 tokens, fewer than one sequence of seq_len=17"):
        PackedSequences(corpus_of([3, 5, 2, 6]), 17)


@pytest.mark.parametrize("seq_len", [0, -3, 2.0, None])
def test_seq_len_must_be_positive(seq_len):
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        PackedSequences(corpus_of([3, 5]), seq_len)


@pytest.mark.parametrize("tokens, doc_starts, message", [
    (np.arange(5, dtype=np.uint32), np.array([0, 3, 4]), r"rise strictly from 0 to len\(tokens\) = 5"),
    (np.arange(5, dtype=np.uint32), np.array([0, 3, 3, 5]), r"rise strictly"),
    (np.arange(5, dtype=np.int64), np.array([0, 5]), r"tokens must be a 1-D uint32 array"),
    (np.arange(5, dtype=np.uint32), np.array([0, 5], dtype=np.int32), r"doc_starts must be a 1-D int64 array"),
])
def test_inconsistent_corpus_is_refused(tokens, doc_starts, message):
    with pytest.raises(ValueError, match=message):
        TokenizedCorpus(tokens, doc_starts)


def test_packed_real_corpus_reproduces_the_token_stream(tmp_path, tok):
    spec, docs = _folder(tmp_path)
    tokens, doc_starts = hand_tokenize(tok, docs)
    seqs = PackedSequences(tokenize_corpus(spec, tok), 7)
    stream = torch.cat([seqs[i][0] for i in range(len(seqs))])
    assert stream.tolist() == tokens[: len(seqs) * 7].tolist()
    cuts = np.concatenate([[0], np.cumsum(torch.cat([seqs[i][1] for i in range(len(seqs))]).numpy())])
    expected = sorted(set(doc_starts[doc_starts < len(stream)]) | set(range(0, len(stream) + 1, 7)))
    assert cuts.tolist() == expected


# Batches

def sequence_ids(batch: Batch, seq_len: int) -> list[int]:
    """Which windows of a `corpus_of` corpus a batch holds: each window's first id is its index * seq_len."""
    return (batch.input_ids.reshape(-1, seq_len)[:, 0] // seq_len).tolist()


def expected_cuts(corpus: TokenizedCorpus, windows: list[int], seq_len: int) -> list[int]:
    """Offsets of the document pieces of `windows` laid end to end, straight from doc_starts."""
    cuts = set()
    for row, w in enumerate(windows):
        start = w * seq_len
        inside = [s for s in corpus.doc_starts.tolist() if start < s < start + seq_len]
        cuts |= {row * seq_len} | {row * seq_len + s - start for s in inside}
    return sorted(cuts | {len(windows) * seq_len})


LENGTHS = [3, 9, 1, 1, 4, 12, 2, 7, 5, 5, 1, 8, 6, 3, 10, 2, 4, 7, 11, 1]  # 102 tokens: 12 windows of 8


def test_document_masked_batch_layout_and_labels():
    corpus = corpus_of(LENGTHS)
    loader = SequenceLoader(PackedSequences(corpus, 8), 3, seed=5)
    for _ in range(6):  # crosses the end of the 4-step epoch
        batch = next(loader)
        windows = sequence_ids(batch, 8)
        assert batch.input_ids.shape == batch.labels.shape == (1, 24) and batch.num_tokens == 24
        assert batch.input_ids[0].tolist() == [t for w in windows for t in range(w * 8, w * 8 + 8)]
        cuts = expected_cuts(corpus, windows, 8)
        assert batch.cu_seqlens.dtype == torch.long and batch.cu_seqlens.tolist() == cuts
        starts = set(cuts[:-1])
        assert batch.labels[0].tolist() == [-100 if t in starts else x for t, x in enumerate(batch.input_ids[0].tolist())]


def test_unmasked_batch_is_plain_rows():
    loader = SequenceLoader(PackedSequences(corpus_of(LENGTHS), 8), 3, seed=5, document_masking=False)
    batch = next(loader)
    windows = sequence_ids(batch, 8)
    assert batch.input_ids.shape == (3, 8) and batch.cu_seqlens is None and batch.num_tokens == 24
    assert batch.input_ids.tolist() == [list(range(w * 8, w * 8 + 8)) for w in windows]
    assert torch.equal(batch.labels, batch.input_ids) and batch.labels.data_ptr() != batch.input_ids.data_ptr()
    masked = SequenceLoader(PackedSequences(corpus_of(LENGTHS), 8), 3, seed=5)
    assert sequence_ids(next(masked), 8) == windows  # masking changes the layout, not the order


def test_batch_to_moves_every_tensor():
    moved = next(SequenceLoader(PackedSequences(corpus_of(LENGTHS), 8), 2)).to("meta")
    assert {moved.input_ids.device.type, moved.labels.device.type, moved.cu_seqlens.device.type} == {"meta"}
    assert moved.num_tokens == 16


def test_masked_batch_loss_is_each_document_piece_scored_alone():
    """With the model: the packed loss equals next-token CE of every piece run on its own; no piece's first token
    is predicted from the previous document or sequence."""
    model = HybridForCausalLM(tiny_config("mixed")).eval()
    corpus = TokenizedCorpus(torch.randint(0, 101, (sum(LENGTHS),)).numpy().astype(np.uint32), corpus_of(LENGTHS).doc_starts)
    batch = next(SequenceLoader(PackedSequences(corpus, 16), 2, seed=1))
    with torch.no_grad():
        packed = model(batch.input_ids, cu_seqlens=batch.cu_seqlens, labels=batch.labels).loss
        bounds = batch.cu_seqlens.tolist()
        total, count = torch.zeros((), dtype=torch.float64), 0
        for s, e in zip(bounds[:-1], bounds[1:]):
            piece = batch.input_ids[:, s:e]
            logits = model(piece).logits[0, :-1]  # position t predicts token t + 1
            total += F.cross_entropy(logits.double(), piece[0, 1:], reduction="sum")
            count += e - s - 1
    assert len(bounds) > 3  # several documents in the batch, or the test proves nothing
    assert_close(packed, (total / count).float(), "packed loss")  # the model computes in fp32


# Order, shards, resume

def loader(n_windows=20, batch_size=2, seq_len=4, **kw) -> SequenceLoader:
    return SequenceLoader(PackedSequences(corpus_of([1] * (n_windows * seq_len)), seq_len), batch_size, **kw)


def take(ld: SequenceLoader, n: int) -> list[list[int]]:
    return [sequence_ids(next(ld), ld.sequences.seq_len) for _ in range(n)]


def test_shuffle_is_a_function_of_the_seed():
    assert take(loader(seed=3), 10) == take(loader(seed=3), 10)
    assert take(loader(seed=3), 10) != take(loader(seed=4), 10)
    epochs = take(loader(seed=3), 20)  # 10 steps per epoch of 20 windows
    first, second = sum(epochs[:10], []), sum(epochs[10:], [])
    assert sorted(first) == sorted(second) == list(range(20))  # each epoch visits every window exactly once
    assert first != second  # and reshuffles


def test_ranks_take_disjoint_shards_of_the_global_batch():
    W, B = 3, 2
    ranks = [loader(n_windows=20, batch_size=B, seed=7, rank=r, world_size=W) for r in range(W)]
    single = loader(n_windows=20, batch_size=B * W, seed=7)
    assert {ld.steps_per_epoch for ld in ranks} == {3}  # 20 // 6: the remainder of 2 is dropped
    for epoch in range(2):
        seen = []
        for _ in range(3):
            shards = [sequence_ids(next(ld), 4) for ld in ranks]
            assert sum(shards, []) == sequence_ids(next(single), 4)  # global batch = perm[k*B*W:(k+1)*B*W]
            seen += sum(shards, [])
        assert len(set(seen)) == len(seen) == 18  # disjoint within the step and across the epoch
        assert {ld.state_dict()["epoch"] for ld in ranks} == {epoch + 1}


@pytest.mark.parametrize("done", [2, 3, 5, 9])  # mid-epoch, at the epoch end, in the second epoch, in the third
@pytest.mark.parametrize("document_masking", [True, False])
def test_resume_gives_the_batches_an_uninterrupted_loader_gives(done, document_masking):
    corpus = corpus_of(LENGTHS)
    make = lambda: SequenceLoader(PackedSequences(corpus, 8), 3, seed=11, document_masking=document_masking)
    reference = make()
    for _ in range(done):
        next(reference)
    state = json.loads(json.dumps(reference.state_dict()))  # as a checkpoint stores it
    assert all(type(v) is int for v in state.values())
    resumed = make()
    resumed.load_state_dict(state)
    for _ in range(7):  # crosses at least one epoch boundary (4 steps per epoch)
        a, b = next(reference), next(resumed)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert (a.cu_seqlens is None and b.cu_seqlens is None) or torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert reference.state_dict() == resumed.state_dict()


def test_numpy_int_arguments_keep_the_state_json_safe():
    seqs = PackedSequences(corpus_of([1] * 80), np.int64(4))
    ld = SequenceLoader(seqs, np.int64(2), seed=np.int64(3), rank=np.int64(1), world_size=np.int64(2))
    next(ld)
    assert json.loads(json.dumps(ld.state_dict())) == ld.state_dict()


@pytest.mark.parametrize("change, message", [
    (dict(seed=1), r"saved loader had seed=0, this one has seed=1"),
    (dict(batch_size=3), r"saved loader had batch_size=2, this one has batch_size=3"),
    (dict(seq_len=5), r"saved loader had seq_len=4, this one has seq_len=5"),
    (dict(n_windows=21), r"saved loader had num_sequences=20, this one has num_sequences=21"),
    (dict(world_size=2), r"saved loader had world_size=1, this one has world_size=2"),
])
def test_resume_into_a_different_loader_is_refused(change, message):
    state = loader().state_dict()
    with pytest.raises(ValueError, match=message):
        loader(**change).load_state_dict(state)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("step"), r"lacks \['step'\]"),
    (lambda s: s.update(step=10), r"state\['step'\] must be an int in \[0, 10\)"),
    (lambda s: s.update(epoch=-1), r"state\['epoch'\] must be a non-negative int"),
])
def test_damaged_loader_state_is_refused(edit, message):
    state = loader().state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        loader().load_state_dict(state)


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), r"batch_size must be a positive int, got 0"),
    (dict(world_size=0), r"world_size must be a positive int, got 0"),
    (dict(rank=3, world_size=3), r"rank must be an int in \[0, world_size\) = \[0, 3\), got 3"),
    (dict(rank=-1), r"rank must be an int in \[0, world_size\) = \[0, 1\), got -1"),
    (dict(seed=-2), r"seed must be a non-negative int, got -2"),
    (dict(batch_size=True), r"batch_size must be a positive int, got True"),
    (dict(batch_size=7, world_size=3), r"20 sequences cannot fill one global batch of batch_size \* world_size = 7 \* 3"),
])
def test_bad_loader_arguments_name_the_argument(kw, message):
    with pytest.raises(ValueError, match=message):
        loader(**kw)


def test_a_global_batch_position_resumes_on_another_split():
    """With `global_batch`, an optimizer step reads the same sequences however it is split into ranks and
    micro-batches, an epoch is whole steps (30 windows, steps of 12: 2 steps, 6 windows dropped), and a position
    saved on 3 ranks of 2 resumes on 2 ranks of 3 or one of 6 at the next global batch."""
    def steps(batch_size, world, n):
        ranks = [loader(n_windows=30, batch_size=batch_size, seed=4, rank=r, world_size=world, global_batch=12)
                 for r in range(world)]
        accum = 12 // (batch_size * world)
        out = [sorted(sum((sum(take(ld, accum), []) for ld in ranks), [])) for _ in range(n)]
        return out, ranks

    reference, _ = steps(6, 1, 5)  # crosses two epoch ends
    assert all(len(s) == 12 for s in reference) and set(reference[0]) & set(reference[1]) == set()
    for split in ((2, 3), (3, 2), (1, 4), (12, 1)):
        assert steps(*split, 5)[0] == reference, split
    done, saved = steps(2, 3, 3)  # 3 steps on 3 ranks, into the second epoch
    state = json.loads(json.dumps(saved[0].state_dict()))
    for batch_size, world in ((3, 2), (6, 1)):
        resumed = [loader(n_windows=30, batch_size=batch_size, seed=4, rank=r, world_size=world, global_batch=12)
                   for r in range(world)]
        for ld in resumed:
            ld.load_state_dict(state)
        accum = 12 // (batch_size * world)
        rest = [sorted(sum((sum(take(ld, accum), []) for ld in resumed), [])) for _ in range(2)]
        assert done + rest == reference, (batch_size, world)
    with pytest.raises(ValueError, match="global_batch=12 must be a multiple of batch_size \\* world_size = 5 \\* 1"):
        loader(n_windows=30, batch_size=5, global_batch=12)
