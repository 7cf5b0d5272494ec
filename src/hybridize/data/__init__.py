"""Text sources, tokenization and packing; synthetic tasks."""

from .loader import Batch, SequenceLoader
from .packing import PackedSequences, TokenizedCorpus, tokenize_corpus
from .sources import BUILTIN, builtin_corpus, corpus_info, iter_documents

__all__ = [
    "BUILTIN",
    "Batch",
    "PackedSequences",
    "SequenceLoader",
    "TokenizedCorpus",
    "builtin_corpus",
    "corpus_info",
    "iter_documents",
    "tokenize_corpus",
]
