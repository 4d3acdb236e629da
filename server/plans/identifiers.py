"""Person and organisation identifiers used in Norwegian (and Swedish) health care.

Pure functions, no I/O. What is checked:

* **Fødselsnummer** (national identity number, 11 digits ``DDMMYYIIIKK``): the birth date,
  the individual number ``III`` against the series that gives the century, and both
  modulus-11 check digits ``KK``.
* **D-number**: a fødselsnummer whose first digit is raised by 4 (day 41-71); same checks.
* **Synthetic test numbers** (accepted unless ``synthetic=False``): the month raised by 80
  (Skatteetaten's synthetic numbers, "syntetiske fødselsnumre", month 81-92) or by 40 (the
  synthetic numbers of NAV's test data, month 41-52; the same shape as the health sector's
  internal H-numbers). Both offsets also combine with a D-number. A month raised by 80 never
  occurs in a real person's number, so :func:`synthetic_fnr` uses that convention.
* **Organisation number** (ENH, 9 digits): modulus-11 check digit with weights
  3,2,7,6,5,4,3,2. The first digit is not checked: real numbers begin with 8 or 9, synthetic
  test organisations use other first digits (:func:`synthetic_orgnr` uses 3).
* **HPR number**: there is no published check-digit rule, so only the format is checked
  (7 to 9 digits).
* **RESH id** and **HER-id**: a positive whole number (format only).
* **Swedish personnummer** (12 digits ``YYYYMMDDNNNC``): the birth date and the Luhn
  check digit over the last ten digits.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeGuard

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
DNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.2"
HPR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.4"
ENH_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.101"
RESH_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.102"
HER_SYSTEM = "urn:oid:2.16.578.1.12.4.1.2"
SE_PERSONNUMMER_SYSTEM = "urn:oid:1.2.752.129.2.1.3.1"
PERSON_SYSTEMS = (FNR_SYSTEM, DNR_SYSTEM, SE_PERSONNUMMER_SYSTEM)
"""The systems of national person identifiers: a value in one of them names one person."""

_K1_WEIGHTS = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_K2_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_ORGNR_WEIGHTS = (3, 2, 7, 6, 5, 4, 3, 2)

SYNTHETIC_MONTH_OFFSETS: dict[int, str] = {40: "nav", 80: "skatteetaten"}
"""Month offsets of synthetic test numbers, and whose convention each one is."""

Kind = Literal["fnr", "dnr"]


@dataclass(frozen=True)
class PersonNumber:
    """What a valid Norwegian person number says about itself."""

    kind: Kind
    birth_date: _dt.date
    synthetic: str | None  # None for an ordinary number, else the convention (see above)
    female: bool


def _digits(s: object, length: int) -> TypeGuard[str]:
    return isinstance(s, str) and len(s) == length and s.isascii() and s.isdigit()


def _mod11(digits: str, weights: tuple[int, ...]) -> int | None:
    """The modulus-11 check digit of ``digits``, or None when the remainder rules it out."""
    check = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def _fnr_check_digits(nine: str) -> str | None:
    k1 = _mod11(nine, _K1_WEIGHTS)
    if k1 is None:
        return None
    k2 = _mod11(nine + str(k1), _K2_WEIGHTS)
    return None if k2 is None else f"{k1}{k2}"


def _century(year2: int, individual: int) -> int | None:
    """The century of a two-digit birth year, from the individual-number series."""
    if individual <= 499:
        return 1900
    if individual <= 749 and year2 >= 54:
        return 1800
    if year2 <= 39:
        return 2000
    if individual >= 900:
        return 1900
    return None


def _individual_series(year: int) -> list[range]:
    """The individual-number series used for people born in ``year``."""
    if 1854 <= year <= 1899:
        return [range(500, 750)]
    if 1900 <= year <= 1939:
        return [range(0, 500)]
    if 1940 <= year <= 1999:
        return [range(0, 500), range(900, 1000)]
    if 2000 <= year <= 2039:
        return [range(500, 1000)]
    raise ValueError(f"no individual-number series for birth year {year}")


def parse_person_number(s: object, *, synthetic: bool = True) -> PersonNumber | None:
    """Check a fødselsnummer or D-number and describe it; None when it is not valid."""
    if not _digits(s, 11):
        return None
    if _fnr_check_digits(s[:9]) != s[9:]:
        return None
    day, month, year2, individual = int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:9])
    kind: Kind = "fnr"
    if day > 40:
        kind, day = "dnr", day - 40
    convention = None
    for offset, name in SYNTHETIC_MONTH_OFFSETS.items():
        if offset < month <= offset + 12:
            if not synthetic:
                return None
            convention, month = name, month - offset
    century = _century(year2, individual)
    if century is None:
        return None
    try:
        born = _dt.date(century + year2, month, day)
    except ValueError:
        return None
    return PersonNumber(kind, born, convention, female=individual % 2 == 0)


def is_valid_fnr(s: object, *, synthetic: bool = True) -> bool:
    """A valid fødselsnummer (not a D-number); synthetic test numbers unless told not to."""
    parsed = parse_person_number(s, synthetic=synthetic)
    return parsed is not None and parsed.kind == "fnr"


def is_valid_dnr(s: object, *, synthetic: bool = True) -> bool:
    """A valid D-number; synthetic test numbers unless told not to."""
    parsed = parse_person_number(s, synthetic=synthetic)
    return parsed is not None and parsed.kind == "dnr"


def is_valid_orgnr(s: object) -> bool:
    """A valid organisation number (Enhetsregisteret): 9 digits, modulus-11 check digit."""
    return _digits(s, 9) and _mod11(s[:8], _ORGNR_WEIGHTS) == int(s[8])


def is_valid_hpr(s: object) -> bool:
    """A well-formed HPR number: 7 to 9 digits (no published check-digit rule)."""
    return any(_digits(s, n) for n in (7, 8, 9))


def _positive_number(s: object) -> bool:
    return isinstance(s, str) and s.isascii() and s.isdigit() and s[0] != "0" and len(s) <= 12


def is_valid_se_personnummer(s: object) -> bool:
    """A valid Swedish personnummer in the 12-digit form ``YYYYMMDDNNNC``."""
    if not _digits(s, 12):
        return False
    try:
        _dt.date(int(s[0:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return False
    return _luhn_check_digit(s[2:11]) == int(s[11])


def _luhn_check_digit(digits: str) -> int:
    total = 0
    for i, d in enumerate(digits):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


@lru_cache(maxsize=4096)
def _synthetic_individuals(birth_date: _dt.date, female: bool | None) -> tuple[str, ...]:
    """Every individual number that makes a valid synthetic number for ``birth_date``."""
    date_part = f"{birth_date.day:02d}{birth_date.month + 80:02d}{birth_date.year % 100:02d}"
    out = []
    for series in _individual_series(birth_date.year):
        for individual in series:
            if female is not None and (individual % 2 == 0) != female:
                continue
            nine = f"{date_part}{individual:03d}"
            check = _fnr_check_digits(nine)
            if check is not None:
                out.append(nine + check)
    return tuple(out)


def synthetic_fnr(birth_date: _dt.date, seq: int = 0, *, female: bool | None = None) -> str:
    """The ``seq``-th (from 0) synthetic fødselsnummer for ``birth_date``.

    The month is raised by 80 (Skatteetaten's synthetic convention), so the number can never
    be a real person's; the individual number follows the series of the birth year and both
    check digits are valid. ``female`` picks the sex digit (even: female). Raises ValueError
    when ``seq`` is beyond the numbers available for that date (several hundred per date).
    """
    numbers = _synthetic_individuals(birth_date, female)
    if not 0 <= seq < len(numbers):
        raise ValueError(f"seq must be in 0..{len(numbers) - 1} for {birth_date.isoformat()}")
    return numbers[seq]


SYNTHETIC_ORGNR_FIRST_DIGIT = "3"


def synthetic_orgnr(seq: int = 0) -> str:
    """The ``seq``-th (from 0) valid organisation number starting with 3.

    Real organisation numbers begin with 8 or 9, so these cannot name a real organisation.
    """
    if seq < 0:
        raise ValueError("seq must not be negative")
    found = -1
    for body in range(10**7):
        eight = f"{SYNTHETIC_ORGNR_FIRST_DIGIT}{body:07d}"
        check = _mod11(eight, _ORGNR_WEIGHTS)
        if check is not None:
            found += 1
            if found == seq:
                return f"{eight}{check}"
    raise ValueError("seq is beyond the synthetic organisation-number range")


def identifier_problems(system: str | None, value: object) -> str | None:
    """Why ``value`` is not a valid identifier of ``system``; None when it is (or when the
    system is not one whose rules are known here)."""
    rule = _RULES.get(system or "")
    if rule is None:
        return None
    check, what = rule
    if check(value):
        return None
    return f"'{value}' is not a valid {what}"


_RULES = {
    FNR_SYSTEM: (is_valid_fnr, "Norwegian fødselsnummer (11 digits: birth date, individual "
                 "number and two modulus-11 check digits)"),
    DNR_SYSTEM: (is_valid_dnr, "Norwegian D-number (11 digits, first digit raised by 4, "
                 "two modulus-11 check digits)"),
    HPR_SYSTEM: (is_valid_hpr, "HPR number (7 to 9 digits)"),
    ENH_SYSTEM: (is_valid_orgnr, "Norwegian organisation number (9 digits with a modulus-11 "
                 "check digit)"),
    RESH_SYSTEM: (_positive_number, "RESH id (a positive whole number)"),
    HER_SYSTEM: (_positive_number, "HER-id (a positive whole number)"),
    SE_PERSONNUMMER_SYSTEM: (is_valid_se_personnummer, "Swedish personnummer (12 digits "
                             "YYYYMMDDNNNC with a Luhn check digit)"),
}
