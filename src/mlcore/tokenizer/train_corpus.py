"""The project's tokenizer: byte-level BPE trained on ``pydoc_data.topics`` (CPython's ~465 kB of docs).

    python -m mlcore.tokenizer.train_corpus --vocab-size 4096 --out tokenizer.bpe [--hf-out tokenizer.json]

Deterministic: same Python version (hence the same corpus) -> the same file. Special tokens default to
``<|endoftext|>`` (the document separator), which takes the last id (``vocab_size - 1``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from .bpe import BPETokenizer
from .patterns import GPT4_PATTERN

DEFAULT_SPECIALS = ("<|endoftext|>",)


def pydoc_corpus() -> str:
    """The corpus: every pydoc topic text, in key order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def train_corpus(vocab_size: int = 4096, special_tokens: Sequence[str] = DEFAULT_SPECIALS) -> BPETokenizer:
    """Train the project tokenizer on :func:`pydoc_corpus` with the GPT-4 split pattern."""
    return BPETokenizer.train(pydoc_corpus(), vocab_size, pattern=GPT4_PATTERN, special_tokens=special_tokens)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096, help="total ids incl. special tokens")
    parser.add_argument("--out", type=Path, required=True, help="mlcore tokenizer file to write")
    parser.add_argument("--hf-out", type=Path, default=None, help="also write a HF tokenizers JSON here")
    parser.add_argument("--special", action="append", default=None,
                        help="special token (repeatable); default: <|endoftext|>")
    args = parser.parse_args(argv)
    specials = tuple(args.special) if args.special else DEFAULT_SPECIALS
    start = time.perf_counter()
    tok = train_corpus(args.vocab_size, specials)
    tok.save(args.out)
    if args.hf_out is not None:
        tok.save_hf(args.hf_out)
    corpus = pydoc_corpus()
    n = len(tok.encode_ordinary(corpus))
    print(f"{tok!r} -> {args.out} in {time.perf_counter() - start:.2f} s; "
          f"corpus {len(corpus.encode('utf-8'))} bytes = {n} tokens "
          f"({len(corpus.encode('utf-8')) / n:.2f} bytes/token)")


if __name__ == "__main__":
    main()
