"""Recognizers: one module per family of identifiers, each a function ``text -> Iterator[PiiSpan]``.

`checksums` (Luhn, ISO 7064 MOD 97-10, ABA) and `context` (context words, identifier prefixes) are shared
helpers; `cards`, `banking`, `national_ids`, `contact`, `secrets` hold the pattern recognizers that
`mlcore.privacy.detect` combines; `ner` is the optional encoder recognizer for names and addresses.
"""
