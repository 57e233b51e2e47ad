"""Byte-level BPE tokenization (GPT-2/GPT-4 style), from scratch and checked against tiktoken and HF.

- ``patterns``: the regex pre-tokenization (``GPT4_PATTERN`` by default)
- ``base``: vocabulary from merges, decode, save/load
- ``naive_trainer`` / ``fast_trainer``: the textbook loop and the incremental one (same merges)
- ``encoder``: rank-ordered merging with a per-chunk cache (tiktoken's algorithm)
- ``bpe``: ``BPETokenizer`` — train, encode, decode, save/load, export
- ``export``: ``tiktoken.Encoding``, Hugging Face ``tokenizers`` JSON and a ``transformers`` folder (``save_pretrained``)
- ``train_corpus``: the project tokenizer, trained on ``pydoc_data.topics``
"""

from .base import BaseTokenizer
from .bpe import BPETokenizer, count_pretokens
from .encoder import bpe_merge
from .fast_trainer import train_fast
from .naive_trainer import train_naive
from .patterns import GPT2_PATTERN, GPT4_PATTERN, split_text

__all__ = [
    "BPETokenizer",
    "BaseTokenizer",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "bpe_merge",
    "count_pretokens",
    "split_text",
    "train_fast",
    "train_naive",
]
