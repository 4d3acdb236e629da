"""Norwegian (and Swedish) identifier checks and the synthetic test-number generators.

Every person number here is synthetic or dated in the future, so none can be a real
person's. The check digits are computed by an oracle written from the published rule,
independently of the code under test.
"""

from __future__ import annotations

import datetime as dt

import pytest

from server.plans import identifiers as ids


def _mod11(digits: str, weights: list[int]) -> int | None:
    rest = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return 0 if rest == 0 else (None if rest == 1 else 11 - rest)


def with_checks(nine: str) -> str | None:
    """Oracle: the 11-digit number for ``nine`` leading digits, None if no check digit."""
    k1 = _mod11(nine, [3, 7, 6, 1, 8, 9, 4, 5, 2])
    if k1 is None:
        return None
    k2 = _mod11(nine + str(k1), [5, 4, 3, 2, 7, 6, 5, 4, 3, 2])
    return None if k2 is None else f"{nine}{k1}{k2}"


def first_valid(date_part: str, individuals: range) -> str:
    for individual in individuals:
        number = with_checks(f"{date_part}{individual:03d}")
        if number is not None:
            return number
    raise AssertionError("no valid number in range")


# Born 15 June 2039 (individual series 500-999): a plain number no person can hold yet.
PLAIN = first_valid("150639", range(500, 1000))
SYNTHETIC = ids.synthetic_fnr(dt.date(1985, 3, 14), 3)


def test_oracle_agrees_with_hand_computation() -> None:
    # 150639 500: K1 = 11 - (1*3+5*7+0*6+6*1+3*8+9*9+5*4+0*5+0*2) % 11 = 11 - 169 % 11
    # = 11 - 4 = 7; K2 = 11 - (5+20+0+12+21+54+25+0+0+7*2) % 11 = 11 - 151 % 11 = 11 - 8 = 3.
    assert with_checks("150639500") == "15063950073"
    assert PLAIN == "15063950073"


def test_plain_fnr_is_valid_without_synthetic() -> None:
    assert ids.is_valid_fnr(PLAIN, synthetic=False)
    parsed = ids.parse_person_number(PLAIN)
    assert parsed == ids.PersonNumber("fnr", dt.date(2039, 6, 15), None, female=True)
    assert not ids.is_valid_dnr(PLAIN)


@pytest.mark.parametrize("position", [9, 10])
def test_each_wrong_check_digit_is_invalid(position: int) -> None:
    for number in (PLAIN, SYNTHETIC):
        for digit in "0123456789":
            if digit == number[position]:
                continue
            wrong = number[:position] + digit + number[position + 1:]
            assert not ids.is_valid_fnr(wrong), wrong


def test_every_single_digit_error_is_caught() -> None:
    for number in (PLAIN, SYNTHETIC):
        for position in range(9):
            for digit in "0123456789":
                if digit != number[position]:
                    changed = number[:position] + digit + number[position + 1:]
                    assert not ids.is_valid_fnr(changed), changed
                    assert not ids.is_valid_dnr(changed), changed


@pytest.mark.parametrize("value", [
    "", "1506395007", "150639500731", "15063950O73", "150639 50073", "150639-50073",
    "\u0661" * 11, 15063950073, None,
])
def test_malformed_person_numbers(value: object) -> None:
    assert not ids.is_valid_fnr(value)
    assert not ids.is_valid_dnr(value)
    assert ids.parse_person_number(value) is None


@pytest.mark.parametrize("date_part, individuals", [
    ("310639", range(500, 1000)),  # 31 June
    ("300239", range(500, 1000)),  # 30 February
    ("000139", range(500, 1000)),  # day 0
    ("151339", range(500, 1000)),  # month 13
    ("290200", range(0, 500)),  # 29 Feb 1900 (individual 000-499: 1900s, not a leap year)
    ("150660", range(750, 900)),  # individual 750-899 is not used for years 40-99
    ("150645", range(500, 750)),  # 500-749 means 1854-1899: no year 45 there
])
def test_impossible_dates_and_series_are_invalid(date_part: str, individuals: range) -> None:
    number = first_valid(date_part, individuals)
    assert ids.parse_person_number(number) is None, number


def test_leap_day_follows_the_century_of_the_series() -> None:
    # 29 February 2000 (individual 500-999 with year 00) exists; 29 February 1900 does not.
    number = first_valid("290200", range(500, 1000))
    assert ids.parse_person_number(number).birth_date == dt.date(2000, 2, 29)


def test_d_number() -> None:
    dnr = first_valid("550639", range(500, 1000))  # day 15 + 40
    assert ids.is_valid_dnr(dnr, synthetic=False)
    assert not ids.is_valid_fnr(dnr)
    assert ids.parse_person_number(dnr).birth_date == dt.date(2039, 6, 15)
    assert ids.parse_person_number(first_valid("720639", range(500, 1000))) is None  # day 32


def test_synthetic_conventions() -> None:
    skatteetaten = first_valid("158685", range(0, 500))  # month 6 + 80
    nav = first_valid("154685", range(0, 500))  # month 6 + 40
    synthetic_dnr = first_valid("558685", range(0, 500))
    for number, convention in ((skatteetaten, "skatteetaten"), (nav, "nav")):
        assert ids.is_valid_fnr(number)
        assert not ids.is_valid_fnr(number, synthetic=False)
        parsed = ids.parse_person_number(number)
        assert (parsed.birth_date, parsed.synthetic) == (dt.date(1985, 6, 15), convention)
    assert ids.is_valid_dnr(synthetic_dnr)
    assert not ids.is_valid_dnr(synthetic_dnr, synthetic=False)
    assert ids.parse_person_number(first_valid("156085", range(0, 500))) is None  # month 60


def test_synthetic_generator_round_trips() -> None:
    seen: set[str] = set()
    day = dt.date(1900, 1, 1)
    for i in range(400):  # 1900 to 1998, both individual series of the 1900s
        birth = day + dt.timedelta(days=i * 90)
        for seq in (0, 1, 7, 50):
            number = ids.synthetic_fnr(birth, seq)
            parsed = ids.parse_person_number(number)
            assert parsed is not None, number
            assert parsed.kind == "fnr" and parsed.synthetic == "skatteetaten"
            assert parsed.birth_date == birth
            assert 81 <= int(number[2:4]) <= 92
            seen.add(number)
    assert len(seen) == 1600


def test_synthetic_generator_sex_and_limits() -> None:
    birth = dt.date(2001, 2, 28)
    assert ids.parse_person_number(ids.synthetic_fnr(birth, 0, female=True)).female
    assert not ids.parse_person_number(ids.synthetic_fnr(birth, 0, female=False)).female
    all_numbers = [ids.synthetic_fnr(birth, seq) for seq in range(400)]
    assert len(set(all_numbers)) == 400
    with pytest.raises(ValueError):
        ids.synthetic_fnr(birth, 10_000)
    with pytest.raises(ValueError):
        ids.synthetic_fnr(dt.date(1800, 1, 1))


def _orgnr_check(eight: str) -> int | None:
    return _mod11(eight, [3, 2, 7, 6, 5, 4, 3, 2])


def test_orgnr_generator_and_check_digit() -> None:
    numbers = [ids.synthetic_orgnr(seq) for seq in range(300)]
    assert len(set(numbers)) == 300
    for number in numbers:
        assert number[0] == "3" and ids.is_valid_orgnr(number)
        assert _orgnr_check(number[:8]) == int(number[8])
        for digit in "0123456789":
            if digit != number[8]:
                assert not ids.is_valid_orgnr(number[:8] + digit)
    # Bodies whose remainder gives check digit 10 have no valid number at all.
    body = next(f"3{n:07d}" for n in range(100) if _orgnr_check(f"3{n:07d}") is None)
    assert not any(ids.is_valid_orgnr(body + d) for d in "0123456789")


@pytest.mark.parametrize("value", ["30000000", "3000000020", "30000000a", "", None, 300000002])
def test_malformed_orgnr(value: object) -> None:
    assert not ids.is_valid_orgnr(value)


def test_orgnr_hand_computed() -> None:
    # 30000000: 3*3 = 9, 9 % 11 = 9, check = 11 - 9 = 2.
    assert ids.synthetic_orgnr(0) == "300000002"


@pytest.mark.parametrize("value, ok", [
    ("1234567", True), ("12345678", True), ("123456789", True), ("123456", False),
    ("1234567890", False), ("12345a7", False), ("", False), (1234567, False),
])
def test_hpr_format(value: object, ok: bool) -> None:
    assert ids.is_valid_hpr(value) is ok


def test_swedish_personnummer() -> None:
    # 1930-05-17, birth number 982. Luhn over 300517982, weights 2,1,2,...:
    # 6+0+0+5+2+7+(1+8)+8+4 = 41 -> check digit 10 - 1 = 9.
    assert ids.is_valid_se_personnummer("193005179829")
    assert not ids.is_valid_se_personnummer("193005179828")
    assert not ids.is_valid_se_personnummer("3005179829")
    assert not ids.is_valid_se_personnummer("193002309829")  # 30 February


def test_identifier_problems() -> None:
    assert ids.identifier_problems(ids.FNR_SYSTEM, SYNTHETIC) is None
    assert ids.identifier_problems(ids.ENH_SYSTEM, ids.synthetic_orgnr(2)) is None
    assert ids.identifier_problems(ids.RESH_SYSTEM, "4001031") is None
    assert ids.identifier_problems(ids.HER_SYSTEM, "0123") is not None
    message = ids.identifier_problems(ids.FNR_SYSTEM, SYNTHETIC[:10] + "x")
    assert message and "fødselsnummer" in message
    assert "organisation number" in ids.identifier_problems(ids.ENH_SYSTEM, "300000003")
    assert ids.identifier_problems("http://example.org/ids", "anything") is None
    assert ids.identifier_problems(None, "anything") is None
