"""Transforms: what replaces a detected value (`masking`: redact, mask, hash, encrypt; `pseudonym`: a valid
look-alike of the same kind)."""
