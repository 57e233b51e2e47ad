"""Check-digit algorithms that turn "looks like a number" into "is a valid number".

- **Luhn** (ISO/IEC 7812-1, H. P. Luhn 1960), payment card numbers: from the rightmost digit, double every
  second digit, subtract 9 from results above 9, and the total must be ≡ 0 (mod 10).
- **ISO 7064 MOD 97-10** (ISO 13616, IBAN): move the first four characters to the end, replace letters by
  A=10 ... Z=35, read the result as one integer N; the IBAN is valid iff N mod 97 == 1.
  Check digits for a BBAN are 98 - (N' mod 97) with N' built from ``country + "00"``.
- **ABA routing transit number** (American Bankers Association): with digits d1..d9,
  3(d1 + d4 + d7) + 7(d2 + d5 + d8) + (d3 + d6 + d9) ≡ 0 (mod 10).

All functions take the bare characters (no spaces or dashes) and validate their argument.
"""

from __future__ import annotations


def _digits(value: str, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str of digits, got {type(value).__name__}")
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{name} must contain only the digits 0-9 ({len(value)} characters given)")
    return value


_DOUBLED = str.maketrans("0123456789", "0246813579")  # d -> 2d, minus 9 when 2d > 9


def luhn_checksum(digits: str) -> int:
    """Luhn sum mod 10 of a full number (0 means valid)."""
    return luhn_sum(_digits(digits, "digits"))


def luhn_sum(digits: str) -> int:
    """`luhn_checksum` without the argument check, for callers that matched ASCII digits already."""
    backwards = digits[::-1]
    kept, doubled = backwards[::2], backwards[1::2].translate(_DOUBLED)  # every second digit from the right
    if digits.isascii():  # summing the bytes (ord("0") = 48 each) is several times cheaper than int() per digit
        return (sum(kept.encode()) + sum(doubled.encode()) - 48 * len(digits)) % 10
    return (sum(map(int, kept)) + sum(map(int, doubled))) % 10


def luhn_valid(digits: str) -> bool:
    """True if `digits` (at least 2 of them) passes the Luhn check."""
    return len(_digits(digits, "digits")) >= 2 and luhn_checksum(digits) == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that, appended to `partial`, makes a Luhn-valid number."""
    return str((10 - luhn_checksum(_digits(partial, "partial") + "0")) % 10)


_LETTER_VALUES = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _iban_integer_mod97(chars: str) -> int:
    """N mod 97 where N is `chars` with letters replaced by 10..35: one big integer when `chars` holds only
    0-9 and A-Z (C speed), else piecewise so that a bad character is named."""
    if chars.isascii() and chars.isalnum() and (chars.isupper() or chars.isdigit()):
        return int(chars.translate(_LETTER_VALUES)) % 97
    remainder = 0
    for ch in chars:
        if "0" <= ch <= "9":
            remainder = (remainder * 10 + ord(ch) - 48) % 97
        elif "A" <= ch <= "Z":
            remainder = (remainder * 100 + ord(ch) - 55) % 97
        else:
            raise ValueError(f"IBAN characters must be 0-9 or A-Z, found a {ch.isalpha() and 'lowercase' or 'symbol'}")
    return remainder


def iban_mod97(iban: str) -> int:
    """ISO 7064 MOD 97-10 remainder of an IBAN written without spaces (1 means valid)."""
    if not isinstance(iban, str):
        raise TypeError(f"iban must be a str, got {type(iban).__name__}")
    if len(iban) < 5:
        raise ValueError(f"iban must have at least 5 characters, got {len(iban)}")
    return _iban_integer_mod97(iban[4:] + iban[:4])


def iban_checksum_valid(iban: str) -> bool:
    """True if the IBAN's check digits are right (the per-country length is checked in `banking`).

    `iban` is the electronic form, without spaces: a printed "GB82 WEST 1234 ..." is refused (ValueError) rather
    than answered False, as `luhn_valid` refuses "4111-1111" (its check digits may well be right)."""
    if not isinstance(iban, str):
        raise TypeError(f"iban must be a str, got {type(iban).__name__}")
    if not (iban.isascii() and iban.isalnum()) and iban:
        raise ValueError(f"iban must be letters and digits only, without spaces or separators (the electronic form, "
                         f"e.g. ''.join(iban.split())); got {len(iban)} characters with "
                         f"{sum(not (c.isascii() and c.isalnum()) for c in iban)} others")
    try:
        return iban[2:4].isdigit() and iban_mod97(iban) == 1
    except ValueError:
        return False


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits for ``country + ?? + bban``."""
    if not (isinstance(country, str) and len(country) == 2 and country.isascii() and country.isupper()):
        raise ValueError("country must be two uppercase letters such as 'GB'")
    return f"{98 - _iban_integer_mod97(bban + country + '00'):02d}"


_ABA_WEIGHTS = (3, 7, 1, 3, 7, 1, 3, 7, 1)


def aba_valid(digits: str) -> bool:
    """True if a 9-digit routing number satisfies 3-7-1 weighted checksum and has a used prefix."""
    digits = _digits(digits, "digits")
    if len(digits) != 9:
        return False
    prefix = int(digits[:2])
    if not (prefix <= 12 or 21 <= prefix <= 32 or 61 <= prefix <= 72 or prefix == 80):
        return False
    return sum(w * (ord(c) - 48) for w, c in zip(_ABA_WEIGHTS, digits)) % 10 == 0


def aba_check_digit(partial: str) -> str:
    """The ninth digit that completes an 8-digit routing number prefix."""
    partial = _digits(partial, "partial")
    if len(partial) != 8:
        raise ValueError(f"partial must have 8 digits, got {len(partial)}")
    s = sum(w * (ord(c) - 48) for w, c in zip(_ABA_WEIGHTS, partial))
    return str((10 - s % 10) % 10)
