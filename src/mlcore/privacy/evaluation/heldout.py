"""Held-out evaluation data that the recognizers were not written against.

`evaluation.synthetic` is the corpus the recognizers were developed on: a perfect score there proves little.
This module builds values from the *issuers' and registries' published rules* (not from our recognizers'
patterns), writes them the way people and systems do (separators, line breaks, OCR-like slips, fullwidth
digits), and places them in hand-written card-issuer customer messages and in Faker sentences of several
locales. Every gold span is ``(kind, start, end)``.

- IBANs: the BBAN structure of every country in the SWIFT IBAN registry (``4!n6!n8!n`` style: n digits,
  a upper-case letters, c alphanumerics), check digits by ISO 7064 MOD 97-10 computed here.
- Cards: IIN ranges and lengths from the networks' public tables, check digit by Luhn computed here.
- SSN (SSA randomisation rules), ABA (3-7-1 check), Canadian SIN (Luhn), UK NINO (HMRC prefix rules),
  UK sort codes, passports (US, UK, DE, FR formats), CVV / expiry next to a card, credentials in URLs.

Two parts with disjoint seeds, message templates and Faker locales: ``split="dev"`` may be looked at while
fixing recognizers; ``split="heldout"`` is only scored. Everything is seeded.
"""

from __future__ import annotations

import random
import string

from mlcore.privacy.evaluation.messages import DEV_TEMPLATES, HELDOUT_TEMPLATES
from mlcore.privacy.evaluation.synthetic import LabelledText

# SWIFT IBAN registry, BBAN structure per country (release 2024-2025).
IBAN_BBAN: dict[str, str] = {
    "AD": "4n4n12c", "AE": "3n16n", "AL": "8n16c", "AT": "5n11n", "AZ": "4a20c", "BA": "3n3n8n2n", "BE": "3n7n2n",
    "BG": "4a4n2n8c", "BH": "4a14c", "BI": "5n5n11n2n", "BR": "8n5n10n1a1c", "BY": "4c4n16c", "CH": "5n12c",
    "CR": "4n14n", "CY": "3n5n16c", "CZ": "4n6n10n", "DE": "8n10n", "DJ": "5n5n11n2n", "DK": "4n9n1n",
    "DO": "4c20n", "EE": "2n2n11n1n", "EG": "4n4n17n", "ES": "4n4n1n1n10n", "FI": "3n11n", "FK": "2a12n",
    "FO": "4n9n1n", "FR": "5n5n11c2n", "GB": "4a6n8n", "GE": "2a16n", "GI": "4a15c", "GL": "4n9n1n",
    "GR": "3n4n16c", "GT": "4c20c", "HN": "4a20n", "HR": "7n10n", "HU": "3n4n1n15n1n", "IE": "4a6n8n",
    "IL": "3n3n13n", "IQ": "4a3n12n", "IS": "4n2n6n10n", "IT": "1a5n5n12c", "JO": "4a4n18c", "KW": "4a22c",
    "KZ": "3n13c", "LB": "4n20c", "LC": "4a24c", "LI": "5n12c", "LT": "5n11n", "LU": "3n13c", "LV": "4a13c",
    "LY": "3n3n15n", "MC": "5n5n11c2n", "MD": "2c18c", "ME": "3n13n2n", "MK": "3n10c2n", "MN": "4n12n",
    "MR": "5n5n11n2n", "MT": "4a5n18c", "MU": "4a2n2n12n3n3a", "NI": "4a20n", "NL": "4a10n", "NO": "4n6n1n",
    "OM": "3n16c", "PK": "4a16c", "PL": "8n16n", "PS": "4a21c", "PT": "4n4n11n2n", "QA": "4a21c", "RO": "4a16c",
    "RS": "3n13n2n", "RU": "9n5n15c", "SA": "2n18c", "SC": "4a2n2n16n3a", "SD": "2n12n", "SE": "3n16n1n",
    "SI": "5n8n2n", "SK": "4n6n10n", "SM": "1a5n5n12c", "SO": "4n3n12n", "ST": "4n4n11n2n", "SV": "4a20n",
    "TL": "3n14n2n", "TN": "2n3n13n2n", "TR": "5n1n16c", "UA": "6n19c", "VA": "3n15n", "VG": "4a16n",
    "XK": "4n10n2n", "YE": "4a4n18c",
}

# Card networks' public IIN tables: (network, IIN prefixes (inclusive ranges), lengths).
CARD_IINS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]], ...] = (
    ("visa", ((4, 4),), (16, 13, 19)), ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)), ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 19)),
    ("jcb", ((3528, 3589),), (16, 19)), ("diners", ((36, 36), (300, 305), (38, 39)), (14, 16)),
    ("unionpay", ((620, 625), (6282, 6288)), (16, 19)), ("maestro", ((6759, 6759), (5018, 5018), (6304, 6304)), (16, 19)),
    ("mir", ((2200, 2204),), (16,)), ("uatp", ((1, 1),), (15,)), ("dankort", ((5019, 5019),), (16,)),
    ("rupay", ((508, 508), (6070, 6079), (6080, 6089)), (16,)), ("elo", ((636368, 636368), (504175, 504175),
                                                                      (509000, 509999), (650031, 650033)), (16,)),
    ("troy", ((9792, 9792),), (16,)), ("verve", ((506099, 506198), (650002, 650027)), (16, 19)),
)

_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_OCR = str.maketrans("015", "OlS")


def luhn_complete(partial: str) -> str:
    """`partial` plus the Luhn check digit (computed here, independent of `recognizers.checksums`)."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return partial + str((10 - total % 10) % 10)


def iban_for(country: str, rng: random.Random) -> str:
    """A valid IBAN of `country` following its registry BBAN structure."""
    bban, count = [], ""
    for ch in IBAN_BBAN[country]:
        if ch.isdigit():
            count += ch
            continue
        alphabet = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}[ch]
        bban += [rng.choice(alphabet) for _ in range(int(count))]
        count = ""
    body = "".join(bban)
    numeric = "".join(str(int(c, 36)) for c in body + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{body}"


def card_for(rng: random.Random, network: str | None = None) -> str:
    """A Luhn-valid card number of a (random) network from the public IIN tables."""
    name, ranges, lengths = next(c for c in CARD_IINS if c[0] == network) if network else rng.choice(CARD_IINS)
    lo, hi = rng.choice(ranges)
    prefix = str(rng.randint(lo, hi))
    length = rng.choice(lengths)
    return luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))


def layout(digits: str, rng: random.Random, *, noisy: bool = True) -> str:
    """A way people and systems print a number: blocks of four (or 4-6-5), spaces, dashes, dots, no-break
    spaces; with `noisy`, sometimes fullwidth digits, a line break, or an OCR slip (O for 0, l for 1)."""
    if len(digits) == 15:
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    sep = rng.choice(["", " ", " ", "-", ".", "\u00a0", "  "])
    text = sep.join(groups) if sep != "." or len(groups) >= 3 else " ".join(groups)
    if noisy:
        roll = rng.random()
        if roll < 0.08:
            text = text.translate(_FULLWIDTH)
        elif roll < 0.12 and len(groups) >= 4:
            text = " ".join(groups[:2]) + "\n" + " ".join(groups[2:])
        elif roll < 0.16:
            text = text.translate(_OCR)
    return text


def _ssn(rng: random.Random) -> str:
    while True:
        area, group, serial = rng.randint(1, 899), rng.randint(1, 99), rng.randint(1, 9999)
        if area != 666 and f"{area:03d}{group:02d}{serial:04d}" not in ("123456789", "078051120", "219099999"):
            sep = rng.choice(["-", "-", " ", "."])
            return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


def _aba(rng: random.Random) -> str:
    prefix = rng.choice([*range(1, 13), *range(21, 33), *range(61, 73), 80])
    body = f"{prefix:02d}" + "".join(rng.choice(string.digits) for _ in range(6))
    s = sum(w * int(c) for w, c in zip((3, 7, 1, 3, 7, 1, 3, 7), body))
    digits = body + str((10 - s % 10) % 10)
    return digits if rng.random() < 0.7 else f"{digits[:4]}-{digits[4:8]}-{digits[8]}"


def _sin(rng: random.Random) -> str:
    digits = luhn_complete(str(rng.choice([1, 2, 3, 4, 5, 6, 7, 9])) + "".join(rng.choice(string.digits)
                                                                              for _ in range(7)))
    sep = rng.choice([" ", "-", ""])
    return sep.join((digits[:3], digits[3:6], digits[6:]))


def _nino(rng: random.Random) -> str:
    first, second = "ABCEGHJKLMNOPRSTWXYZ", "ABCEGHJKLMNPRSTWXYZ"
    while (prefix := rng.choice(first) + rng.choice(second)) in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
        pass
    digits = "".join(rng.choice(string.digits) for _ in range(6))
    suffix = rng.choice("ABCD")
    return rng.choice([f"{prefix}{digits}{suffix}", f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"])


def _passport(rng: random.Random) -> str:
    d = string.digits
    return rng.choice([
        "".join(rng.choice(d) for _ in range(9)),                                          # US / UK
        rng.choice("CFGHJK") + "".join(rng.choice("CFGHJKLMNPRTVWXYZ" + d) for _ in range(8)),  # DE
        "".join(rng.choice(d) for _ in range(2)) + "".join(rng.choice(string.ascii_uppercase) for _ in range(2))
        + "".join(rng.choice(d) for _ in range(5)),                                        # FR
    ])


def value_for(kind: str, rng: random.Random, fake) -> str:
    """One value of `kind`, built from the issuing rules (or by Faker for contact data)."""
    if kind == "CARD":
        return layout(card_for(rng), rng)
    if kind == "IBAN":
        iban = iban_for(rng.choice(sorted(IBAN_BBAN)), rng)
        sep = rng.choice(["", " ", " ", "-", "."])
        return sep.join(iban[i : i + 4] for i in range(0, len(iban), 4)) if sep else iban
    if kind == "SSN":
        return _ssn(rng)
    if kind == "ABA_ROUTING":
        return _aba(rng)
    if kind == "CA_SIN":
        return _sin(rng)
    if kind == "UK_NINO":
        return _nino(rng)
    if kind == "UK_SORT_CODE":
        return "-".join(f"{rng.randint(0, 99):02d}" for _ in range(3))
    if kind == "PASSPORT":
        return _passport(rng)
    if kind == "CARD_CVV":
        return "".join(rng.choice(string.digits) for _ in range(rng.choice([3, 3, 4])))
    if kind == "CARD_EXPIRY":
        return f"{rng.randint(1, 12):02d}/{rng.choice([str(rng.randint(26, 34)), str(rng.randint(2026, 2034))])}"
    if kind == "EMAIL":
        return fake.email() if rng.random() < 0.8 else f"{fake.user_name()}@{fake.domain_word()}.xn--p1ai"
    if kind == "PHONE":
        return fake.phone_number()
    if kind == "IP_ADDRESS":
        return rng.choice([fake.ipv4_public(), fake.ipv6(), f"::ffff:{fake.ipv4_public()}"])
    if kind == "SECRET":
        user = fake.user_name()
        pw = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(8, 16)))
        return f"{user}:{pw}"
    if kind == "DATE_OF_BIRTH":
        return fake.date_of_birth(minimum_age=18, maximum_age=90).strftime(rng.choice(["%Y-%m-%d", "%d.%m.%Y",
                                                                                        "%m/%d/%Y"]))
    raise ValueError(f"kind {kind!r} has no generator here")


DEV_LOCALES = ("en_US", "de_DE", "fr_FR", "en_GB")
HELDOUT_LOCALES = ("it_IT", "es_ES", "nl_NL", "pt_BR", "en_CA", "pl_PL", "en_IN", "sv_SE")


def fill(template: str, rng: random.Random, fake) -> LabelledText:
    """A hand-written message with ``{KIND}`` holes, filled with generated values and labelled."""
    text, spans = "", []
    for i, piece in enumerate(template.replace("{", "}").split("}")):
        if i % 2 == 0:
            text += piece
            continue
        value = value_for(piece, rng, fake)
        if piece == "SECRET":  # a credential inside a connection string
            scheme = rng.choice(["postgres", "mysql", "redis", "amqp", "mongodb+srv"])
            text += f"{scheme}://"
            spans.append((piece, len(text), len(text) + len(value)))
            text += f"{value}@{fake.domain_name()}/db"
            continue
        spans.append((piece, len(text), len(text) + len(value)))
        text += value
    return LabelledText(text, spans)


def heldout_records(n: int, *, split: str = "heldout", seed: int | None = None) -> list[LabelledText]:
    """`n` labelled messages of one split ("dev" or "heldout"); templates, locales and seeds are disjoint."""
    from faker import Faker  # optional dependency ([hf] extra)

    if split not in ("dev", "heldout"):
        raise ValueError(f"split must be 'dev' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    templates = DEV_TEMPLATES if split == "dev" else HELDOUT_TEMPLATES
    locales = DEV_LOCALES if split == "dev" else HELDOUT_LOCALES
    rng = random.Random((1 if split == "dev" else 2) * 1_000_003 + (seed or 0))
    fakes = []
    for i, loc in enumerate(locales):
        f = Faker(loc)
        f.seed_instance(rng.randint(0, 2**31) + i)
        fakes.append(f)
    return [fill(templates[k % len(templates)], rng, fakes[k % len(fakes)]) for k in range(n)]
