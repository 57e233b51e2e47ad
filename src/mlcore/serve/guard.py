"""Guardrails in the request path: ``scan_input`` before the model, the streaming output guard after it.

- Input: every prompt (every chat message) goes through ``mlcore.privacy.scan_input``. An injection or
  blocklist hit blocks the request (HTTP 400 naming the rules). PII is handled by the server's policy:
  ``"mask"`` sends the masked prompt to the model, ``"block"`` refuses it (400), ``"allow"`` passes it on.
- Output: :class:`GuardedText` turns the engine's token ids into text deltas that are safe to send. It
  detokenizes incrementally (holding back an incomplete UTF-8 character), cuts at a ``stop`` string, and feeds
  the text through ``mlcore.privacy.OutputGuard``, whose hold-back window keeps a card number that arrives
  split over several tokens from ever leaving the server unmasked. Streaming and non-streaming responses use
  this same class, so what a test proves on one holds for the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlcore.privacy import OutputGuard, scan_input

PII_POLICIES = ("mask", "block", "allow")


@dataclass
class InputVerdict:
    allowed: bool
    text: str
    reasons: list[str] = field(default_factory=list)
    message: str = ""


def guard_input(text: str, *, pii_policy: str = "mask", blocklist: Sequence[str] = ()) -> InputVerdict:
    """Apply ``scan_input`` and the PII policy to one prompt (see the module docstring)."""
    if pii_policy not in PII_POLICIES:
        raise ValueError(f"pii_policy must be one of {PII_POLICIES}, got {pii_policy!r}")
    result = scan_input(text, blocklist=blocklist)
    reasons = list(result.reasons)
    if result.verdict == "block":
        fired = [r for r in reasons if not r.startswith(("pii:", "secret:"))]
        return InputVerdict(False, "", reasons, f"prompt blocked by the input guardrail: {', '.join(fired)}")
    pii = [r for r in reasons if r.startswith(("pii:", "secret:"))]
    if pii and pii_policy == "block":
        return InputVerdict(False, "", reasons, f"prompt contains personal data ({', '.join(pii)}); this server's "
                            "policy refuses it: remove it or mask it before sending")
    secrets = any(r.startswith("secret:") for r in reasons)
    text_out = result.safe_text if (pii and (pii_policy == "mask" or secrets)) else text
    return InputVerdict(True, text_out, reasons)


class GuardedText:
    """Token ids in, guarded text deltas out: ``feed(token) -> str``, ``close() -> str``.

    Args:
        decode: token ids -> text (the tokenizer's decode).
        stop: strings that end the output (not included), as OpenAI's ``stop``.
        guard: False passes text unguarded (never in the server).
    """

    def __init__(self, decode: Callable[[list[int]], str], *, stop: Sequence[str] = (), guard: bool = True,
                 blocklist: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, [s for s in stop if s]
        self.guard = OutputGuard(blocklist=blocklist) if guard else None
        self.ids: list[int] = []
        self.raw = ""  # decoded text so far (complete characters)
        self.fed = 0  # characters of raw handed to the guard
        self.stopped = False  # a stop string matched
        self.blocked = False  # the guard withheld the rest
        self.shown: list[str] = []
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    @property
    def text(self) -> str:
        return "".join(self.shown)

    @property
    def reasons(self) -> list[str]:
        return list(self.guard.result.reasons) if self.guard is not None else []

    def _out(self, chunk: str, final: bool = False) -> str:
        out = chunk
        if self.guard is not None:
            out = self.guard.feed(chunk) if chunk else ""
            if final:
                out += self.guard.close()
            self.blocked = self.guard.result.verdict == "block"
        if out:
            self.shown.append(out)
        return out

    def feed(self, token: int) -> str:
        if self.stopped or self.blocked:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 character: wait for the next token
        self.raw = text
        for s in self.stop:
            at = self.raw.find(s)
            if at >= 0:
                self.stopped = True
                self.raw = self.raw[:at]
        end = len(self.raw) if self.stopped else max(self.fed, len(self.raw) - self._hold)
        chunk, self.fed = self.raw[self.fed:end], end
        return self._out(chunk)

    def close(self) -> str:
        if self.blocked:
            return ""
        chunk, self.fed = self.raw[self.fed:], len(self.raw)
        return self._out(chunk, final=True)
