"""Hypothesis strategies for tokenizer tests: hostile Unicode text."""

from hypothesis import strategies as st

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Text that stresses pre-tokenization and byte merging: emoji (incl. ZWJ sequences and skin tones),
# combining marks, CJK, right-to-left scripts, whitespace runs, digit runs, contractions, punctuation.
FRAGMENTS = [
    "👍", "👨‍👩‍👧", "🏳️‍🌈", "👋🏽", "e\u0301", "n\u0303", "\u0300\u0301", "漢字", "日本語のテキスト", "한국어",
    "مرحبا بالعالم", "שלום", "\u200f", "\u200d", "  ", "\t\t", "\n\n\n", " \n ", "\r\n", "   x", "123456789",
    "3.14159", "1,000,000", "'s", "'LL", "don't", "I'M", "...", "!!!", "—", "«»", "ﬁ", "ß", "İ", "Ω", " the",
    "def f(x):\n    return x", "<|endoftext|>", "<|im_start|>", "\x00", "\x7f", "\ufeff", "\U0001f600",
]
ALPHABET = st.characters(codec="utf-8")  # everything UTF-8 can encode (no lone surrogates)
unicode_text = st.one_of(
    st.text(ALPHABET, max_size=60),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(ALPHABET, max_size=6)), max_size=20).map("".join),
)
