"""Text sources, tokenization and packing; synthetic tasks."""

from .sources import BUILTIN, builtin_corpus, corpus_info, iter_documents

__all__ = ["BUILTIN", "builtin_corpus", "corpus_info", "iter_documents"]
