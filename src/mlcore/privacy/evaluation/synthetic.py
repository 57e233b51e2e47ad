"""A labelled synthetic corpus for measuring detection: realistic values (Faker) in sentences, plus hard
negatives that fool naive regexes.

Positives carry their gold span ``(kind, start, end)``. Negatives are built to look like PII and fail a
rule: Luhn-failing card-shaped numbers (even after "card"), order and tracking numbers, millisecond
timestamps, version strings, phone-like dates, SSNs with a never-issued area/group/serial, IBANs with a
broken check or length, decimals, git hashes and UUIDs. The ground-truth rules (Luhn, SSA ranges) are
re-implemented here in a few lines, independent of the detector's code, so labels do not inherit its bugs.

Everything is seeded: the same `seed` gives the same records.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import string
from dataclasses import dataclass, field


@dataclass
class LabelledText:
    """A text and its gold spans ``(kind, start, end)``."""

    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)


def _luhn_ok(digits: str) -> bool:  # ground truth, independent of checksums.py
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d
    return total % 10 == 0


def _complete_luhn(partial: str) -> str:
    return next(partial + str(c) for c in range(10) if _luhn_ok(partial + str(c)))


# (brand, prefix choices, length) — printed layouts follow the length
_CARD_SPECS = (
    ("visa", ["4"], 16), ("visa", ["4"], 13), ("visa", ["4"], 19), ("mastercard", ["51", "53", "55"], 16),
    ("mastercard", ["2221", "2500", "2720"], 16), ("amex", ["34", "37"], 15), ("discover", ["6011", "65", "645"], 16),
    ("jcb", ["3528", "3589", "3540"], 16), ("diners", ["300", "305", "36", "38"], 14), ("unionpay", ["62"], 16),
)


def _group(digits: str, sep: str) -> str:
    if not sep:
        return digits
    if len(digits) == 15:
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    if len(digits) == 14 and digits[:2] in ("30", "36", "38"):
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


class SyntheticPii:
    """Generator of labelled records. ``SyntheticPii(seed).records(n)``."""

    def __init__(self, seed: int = 0, *, hard_negative_rate: float = 0.5) -> None:
        from faker import Faker  # optional ([hf] extra): imported only when records are generated

        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.locales = {loc: Faker(loc) for loc in ("de_DE", "en_GB", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL")}
        for i, f in enumerate(self.locales.values()):
            f.seed_instance(seed + 1 + i)
        self.hard_negative_rate = hard_negative_rate

    # ---- values -------------------------------------------------------------------------------
    def card_digits(self, valid: bool = True) -> str:
        r = self.rng
        if valid and r.random() < 0.3:
            # not Faker's "jcb16": it draws from all of 35xx, wider than JCB's assigned 3528-3589
            kind = r.choice(["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15"])
            return self.fake.credit_card_number(kind)
        _, prefixes, length = r.choice(_CARD_SPECS)
        partial = r.choice(prefixes)
        partial += "".join(r.choice(string.digits) for _ in range(length - 1 - len(partial)))
        good = _complete_luhn(partial)
        return good if valid else good[:-1] + str((int(good[-1]) + r.randint(1, 9)) % 10)

    def card(self, valid: bool = True) -> str:
        return _group(self.card_digits(valid), self.rng.choice(["", " ", " ", "-"]))

    def ssn(self, valid: bool = True) -> str:
        r = self.rng
        sep = r.choice(["-", "-", " "])
        if valid:
            area, group, serial = self.fake.ssn().split("-")
        else:
            area, group, serial = r.choice([
                ("000", f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"),
                ("666", f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"),
                (f"{r.randint(900, 999)}", f"{r.choice([*range(1, 50), *range(66, 70), 89, 93]):02d}",
                 f"{r.randint(1, 9999):04d}"),
                (f"{r.randint(1, 665):03d}", "00", f"{r.randint(1, 9999):04d}"),
                (f"{r.randint(1, 665):03d}", f"{r.randint(1, 99):02d}", "0000"),
            ])
        return sep.join((area, group, serial))

    def iban(self, valid: bool = True) -> str:
        r = self.rng
        value = r.choice(list(self.locales.values())).iban()
        if not valid:
            if r.random() < 0.5:
                wrong = r.choice([c for c in range(2, 99) if c != int(value[2:4])])  # 2..98 differ mod 97
                value = value[:2] + f"{wrong:02d}" + value[4:]
            else:
                value = value[:-1]
        if r.random() < 0.5:
            value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        return value

    def phone(self) -> str:
        r = self.rng
        area, exch, line = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        return r.choice([
            f"({area}) {exch}-{line:04d}", f"{area}-{exch}-{line:04d}", f"{area}.{exch}.{line:04d}",
            f"+1 {area} {exch} {line:04d}", f"+1{area}{exch}{line:04d}", f"+44 20 {r.randint(7000, 8999)} {line:04d}",
            f"+49 151 {r.randint(1000000, 9999999)}",
        ])

    def dob(self) -> str:
        d = self.fake.date_of_birth(minimum_age=18, maximum_age=90)
        return self.rng.choice([d.strftime("%Y-%m-%d"), d.strftime("%m/%d/%Y"), d.strftime("%d.%m.%Y"),
                                d.strftime("%B %d, %Y").replace(" 0", " ")])

    def secret(self) -> str:
        r = self.rng
        alnum = string.ascii_letters + string.digits
        header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=").decode()
        payload = base64.urlsafe_b64encode(json.dumps({"sub": str(r.randint(1, 10**6))}).encode()).rstrip(b"=")
        return r.choice([
            "AKIA" + "".join(r.choice(string.ascii_uppercase + "234567") for _ in range(16)),
            "ghp_" + "".join(r.choice(alnum) for _ in range(36)),
            "sk_live_" + "".join(r.choice(alnum) for _ in range(24)),
            "xoxb-" + "-".join("".join(r.choice(string.digits) for _ in range(12)) for _ in range(2))
            + "-" + "".join(r.choice(alnum) for _ in range(24)),
            f"{header}.{payload.decode()}." + "".join(r.choice(alnum + "-_") for _ in range(43)),
        ])

    # ---- sentences -----------------------------------------------------------------------------
    def _positive(self) -> tuple[str, str, str]:
        """(template with one {}, kind, value)."""
        r, f = self.rng, self.fake
        kind = r.choice(["CARD"] * 4 + ["SSN"] * 3 + ["ITIN", "ABA_ROUTING", "ACCOUNT_NUMBER", "EMAIL", "PHONE",
                                                       "IP_ADDRESS", "DATE_OF_BIRTH", "SECRET"] + ["IBAN"] * 3)
        value = {
            "CARD": self.card, "SSN": self.ssn, "IBAN": self.iban, "ITIN": lambda: f.itin(),
            "ABA_ROUTING": lambda: f.aba(), "ACCOUNT_NUMBER": lambda: str(r.randint(10**7, 10**12)),
            "EMAIL": lambda: f.email(), "PHONE": self.phone, "DATE_OF_BIRTH": self.dob, "SECRET": self.secret,
            "IP_ADDRESS": lambda: r.choice([f.ipv4_public(), f.ipv6()]),
        }[kind]()
        templates = {
            "CARD": ["Card number: {}.", "Please charge {} for the order.", "cc={} exp=12/27", "refund to {} today",
                     "{} was declined twice", "my visa is {}", "1042,{},12/27,USD", "card {} 09/28 cvv on back"],
            "SSN": ["SSN: {}", "Social security number {} on file.", "applicant {} verified", "{} (self)",
                    "7,{},active"],
            "ITIN": ["ITIN {} issued", "taxpayer id: {}"],
            "IBAN": ["IBAN: {}", "Wire the funds to {} by Friday.", "beneficiary {} confirmed", "{}"],
            "ABA_ROUTING": ["routing number {}", "ABA: {}"],
            "ACCOUNT_NUMBER": ["account number: {}", "acct #{}", "Account No. {} closed"],
            "EMAIL": ["Contact {} for details.", "from: {}", "{} wrote:"],
            "PHONE": ["Call me at {}.", "tel: {}", "reach the branch on {}"],
            "IP_ADDRESS": ["login from {} failed", "client ip={}", "{} - - [GET /]"],
            "DATE_OF_BIRTH": ["DOB: {}", "born {}", "date of birth {}"],
            "SECRET": ["export TOKEN={}", "api_key: {}", "leaked key {} in repo", "Authorization: Bearer {}"],
        }[kind]
        return r.choice(templates), kind, value

    def _negative(self) -> str:
        r, f = self.rng, self.fake
        return r.choice([
            lambda: f"card number {self.card(valid=False)} was rejected as mistyped",
            lambda: f"Order #{r.randint(10**9, 10**12)} shipped",
            lambda: f"tracking 1Z{''.join(r.choice(string.ascii_uppercase + string.digits) for _ in range(16))}",
            lambda: "USPS " + " ".join(f"{r.randint(0, 9999):04d}" for _ in range(5)) + f" {r.randint(10, 99)}",
            lambda: f"ts={r.randint(1_600_000_000_000, 1_800_000_000_000)} level=INFO",
            lambda: f"{f.date_time_between(dt.datetime(2015, 1, 1), dt.datetime(2025, 1, 1)).isoformat()}.{r.randint(100, 999)}Z request done",
            lambda: f"upgraded to v{r.randint(0, 20)}.{r.randint(0, 40)}.{r.randint(0, 99)}",
            lambda: f"build {r.randint(1, 20)}.{r.randint(0, 9)}.{r.randint(1000, 30000)}.{r.randint(1, 999)}",
            lambda: f"meeting on {f.date_between('-2y', '+1y').strftime(r.choice(['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d']))}",
            lambda: f"ID {self.ssn(valid=False)} is not a valid number",
            lambda: f"IBAN {self.iban(valid=False)} failed validation",
            lambda: f"pi is about {r.randint(1, 9)}.{r.randint(10**15, 10**16 - 1)}",
            lambda: f"total ${r.randint(1, 999)},{r.randint(100, 999)},{r.randint(100, 999)}.{r.randint(10, 99)}",
            lambda: f"commit {''.join(r.choice('0123456789abcdef') for _ in range(40))}",
            lambda: f"request id {f.uuid4()}",
            lambda: f"ticket {r.randint(10**8, 10**9 - 1)} resolved",
            lambda: f"{r.randint(10**19, 10**21)} items in inventory",
        ])()

    def record(self) -> LabelledText:
        r = self.rng
        parts: list[str] = []
        spans: list[tuple[str, int, int]] = []
        pos = 0
        for _ in range(r.randint(1, 3)):
            if r.random() < self.hard_negative_rate:
                piece = self._negative()
            elif r.random() < 0.2:
                piece = self.fake.sentence()
            else:
                template, kind, value = self._positive()
                at = template.index("{}")
                spans.append((kind, pos + at, pos + at + len(value)))
                piece = template.replace("{}", value)
            sep = r.choice([". ", "; ", " | ", "\n"])
            parts.append(piece + sep)
            pos += len(piece) + len(sep)
        return LabelledText("".join(parts), spans)

    def records(self, n: int) -> list[LabelledText]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self.record() for _ in range(n)]


def synthetic_log(n_bytes: int, *, seed: int = 0) -> str:
    """A log-like text of about `n_bytes` characters mixing PII, hard negatives and filler (for throughput)."""
    gen = SyntheticPii(seed)
    lines, size = [], 0
    while size < n_bytes:
        line = f"2024-05-{gen.rng.randint(1, 28):02d} INFO " + gen.record().text
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)
