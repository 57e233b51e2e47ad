"""Injection-check rates for the privacy topic: benign messages blocked and attacks blocked, new vs old rules,
on the dev split (rules tuned there), the held-out split (not looked at while tuning) and the probe (written
after the rules were frozen, in deliberately new wording).

`OLD_RULES` / `old_injection_score` are a frozen copy of the keyword rules `scan_input` used before issue 14,
kept only as the evaluation baseline. Wire into benchmarks/privacy.py with::

    from benchmarks._privacy_guards import INJECTION_TABLE, injection_results
    TABLES.append(INJECTION_TABLE); yield from injection_results()

Goal (issue 14), on held-out: at most 2% of benign messages blocked, at least 80% of attacks blocked.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Iterator

from mlcore.bench import Goal, Result, Table
from mlcore.privacy.guards.data.eval_set import Example, injection_eval
from mlcore.privacy.guards.injection import detect_injection

THRESHOLD = 0.7  # scan_input's default, before and after
INJECTION_TABLE = Table("Prompt-injection check: share blocked (labelled set: dev, held-out, probe)",
                        where={"task": "injection"}, params=("rules", "split"),
                        columns=("benign_blocked", "attacks_blocked", "benign", "attacks", "ms_per_message"))

OLD_RULES: tuple[tuple[str, re.Pattern[str], float], ...] = tuple(
    (name, re.compile(p, re.IGNORECASE | re.MULTILINE), w)
    for name, p, w in (
        ("ignore_instructions", r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}?\b(?:previous|prior|above|"
         r"earlier|all|any|your|the|system)\b[^.\n]{0,30}?\b(?:instructions?|rules|prompts?|guidelines|directions)",
         0.9),
        ("reveal_system_prompt", r"\b(?:reveal|show|print|repeat|output|leak|tell me)\b[^.\n]{0,30}?\b(?:system prompt|"
         r"hidden (?:instructions|prompt)|initial (?:instructions|prompt)|your (?:instructions|prompt))", 0.8),
        ("role_override", r"\byou are now\b|\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken)|\bDAN\b|"
         r"do anything now|developer mode|\bjailbreak", 0.7),
        ("chat_template_tokens", r"<\|(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|"
         r"^\s*###?\s*(?:system|instruction)s?\s*:", 0.8),
        ("disable_safety", r"\b(?:bypass|disable|turn off|ignore)\b[^.\n]{0,20}?\b(?:safety|filters?|guardrails?|"
         r"moderation|content polic(?:y|ies))", 0.7),
        ("system_prompt_question", r"\bwhat(?:'s| is| are| were)\s+(?:your\s+(?:system prompt|(?:initial |hidden |"
         r"original |secret )?instructions)|the\s+(?:system prompt|(?:initial|hidden|original|secret) instructions))"
         r"|\brepeat\b[^.\n]{0,40}?\b(?:verbatim|word for word)\b", 0.7),
        ("stop_following", r"\b(?:stop|quit|cease) (?:following|obeying)\b[^.\n]{0,20}?\b(?:instructions?|rules|"
         r"guidelines|programming)|\bfrom now on,? you (?:will|must|are)\b", 0.7),
        ("exfiltration", r"\b(?:send|post|upload|exfiltrate|forward)\b[^.\n]{0,40}?(?:https?://|\bwebhook\b)", 0.5),
        ("encoded_payload", r"[A-Za-z0-9+/]{200,}={0,2}", 0.3),
    )
)
_OLD_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff"))
_OLD_SPACED = re.compile(r"\b(?:[A-Za-z] ){3,}[A-Za-z]\b")


def old_injection_score(text: str) -> float:
    """The pre-issue-14 score: keyword patterns on the text and on its NFKC / letter-spacing-collapsed form."""
    plain = unicodedata.normalize("NFKC", text).translate(_OLD_INVISIBLE)
    plain = _OLD_SPACED.sub(lambda m: m.group().replace(" ", ""), plain)
    keep = 1.0
    for _, pattern, w in OLD_RULES:
        if pattern.search(text) or pattern.search(plain):
            keep *= 1.0 - w
    return 1.0 - keep


def new_injection_score(text: str) -> float:
    return detect_injection(text).score


SCORERS: dict[str, Callable[[str], float]] = {"new": new_injection_score, "old": old_injection_score}


def injection_rates(examples: list[Example] | None = None) -> list[dict]:
    """One row per (rules, split): share of benign messages blocked and of attacks blocked, counts, and the
    misses (benign texts blocked, attack disguises let through) for inspection."""
    examples = injection_eval() if examples is None else examples
    rows = []
    for rules, score in SCORERS.items():
        for split in ("dev", "heldout", "probe"):
            part = [e for e in examples if e.split == split]
            t0 = time.perf_counter()
            blocked = [score(e.text) >= THRESHOLD for e in part]
            ms = 1e3 * (time.perf_counter() - t0) / max(len(part), 1)
            benign = [b for e, b in zip(part, blocked, strict=True) if e.label == 0]
            attacks = [b for e, b in zip(part, blocked, strict=True) if e.label == 1]
            rows.append({
                "rules": rules, "split": split, "benign": len(benign), "attacks": len(attacks),
                "benign_blocked": sum(benign) / len(benign), "attacks_blocked": sum(attacks) / len(attacks),
                "ms_per_message": round(ms, 3),
                "false_blocks": [e.text for e, b in zip(part, blocked, strict=True) if e.label == 0 and b],
                "missed": [(e.disguise, e.lang) for e, b in zip(part, blocked, strict=True) if e.label == 1 and not b],
            })
    return rows


def injection_results() -> Iterator[Result]:
    """The rates as benchmark results (median = share of attacks blocked; goals on the new rules, held-out)."""
    for row in injection_rates():
        goal = None
        if row["rules"] == "new" and row["split"] == "heldout":
            goal = [Goal("<=", 0.02, "benign customer messages blocked (held-out)", metric="benign_blocked"),
                    Goal(">=", 0.80, "attacks blocked (held-out)", metric="attacks_blocked")]
        yield Result("privacy", f"injection[{row['rules']},{row['split']}]",
                     {"task": "injection", "rules": row["rules"], "split": row["split"]}, "cpu", None,
                     median=row["attacks_blocked"], spread=0.0, unit="share", better="higher", goal=goal,
                     extra={k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                            if k in ("benign_blocked", "attacks_blocked", "benign", "attacks", "ms_per_message")})


if __name__ == "__main__":
    for r in injection_rates():
        print(f"{r['rules']:>3} {r['split']:>7}: benign blocked {r['benign_blocked']:.1%} of {r['benign']}, "
              f"attacks blocked {r['attacks_blocked']:.1%} of {r['attacks']}, {r['ms_per_message']} ms/message")
