"""Redaction: a secret's value, and any long piece of it, never survives; cost stays linear.

pytest truncates long reprs (``'k3y-...'``), so a failing gate test prints part of a
secret: any run of at least :data:`deploykit.secrets.FRAGMENT_MIN` characters of a secret
is masked like the secret. A 10 MB secret must not make every log line slow: the work
per secret is bounded when it is indexed, not repeated per output line.
"""

from __future__ import annotations

import secrets as random

import pytest

from deploykit import secrets as secrets_module
from deploykit.secrets import FRAGMENT_MIN, REDACTED, Secret, redact

KEY = "django-insecure-7f3c9b1e4a2d8f6c0b5e3a1d9c7f2e4b6a8d0c2e4f6a8b0c"


def test_the_whole_value_is_masked() -> None:
    assert redact(f"SECRET_KEY={KEY}\n", [Secret(KEY)]) == f"SECRET_KEY={REDACTED}\n"


def test_a_truncated_repr_of_a_secret_is_masked() -> None:
    # what pytest prints for `assert settings["SECRET_KEY"] == ""` on a long value
    shown = f"E       AssertionError: assert '{KEY[:30]}...' == ''"
    out = redact(shown, [Secret(KEY)])
    assert KEY[:30] not in out
    assert KEY[:FRAGMENT_MIN] not in out and REDACTED in out
    assert out.startswith("E       AssertionError: assert '") and out.endswith("...' == ''")


@pytest.mark.parametrize("start", [0, 1, 7, 13, 20])
def test_every_piece_of_the_minimum_length_is_masked(start: int) -> None:
    piece = KEY[start:start + FRAGMENT_MIN]
    out = redact(f"<failure message=\"x {piece} y\"/>", [Secret(KEY)])
    assert piece not in out and "x " + REDACTED + " y" in out


def test_short_pieces_and_unrelated_text_stay() -> None:
    text = "django 4.2 serves on port 8000; ok"
    assert redact(text, [Secret(KEY)]) == text


def test_a_short_secret_is_masked_whole_only() -> None:
    assert redact("pw=hunter2; hunter", [Secret("hunter2")]) == f"pw={REDACTED}; hunter"


def test_pieces_of_several_secrets_in_one_text() -> None:
    other = random.token_hex(40)
    text = f"a={KEY[3:40]} b={other[10:60]} c={other}"
    out = redact(text, [Secret(KEY), Secret(other)])
    assert out == f"a={REDACTED} b={REDACTED} c={REDACTED}"


def test_a_10_mb_secret_is_indexed_in_bounded_memory_and_its_pieces_masked() -> None:
    big = random.token_urlsafe(10 * 2**20)[:10 * 2**20]
    matcher = secrets_module.matcher_for([big])
    assert matcher.indexed_windows() <= secrets_module.MAX_WINDOWS_PER_SECRET
    middle = big[5_000_000:5_000_000 + secrets_module.fragment_floor(len(big)) + 50]
    text = ("log line without secrets\n" * 20_000) + f"E   assert '{middle}...'\n" + big
    out = redact(text, [Secret(big)])
    assert middle[:secrets_module.fragment_floor(len(big))] not in out
    assert middle[-secrets_module.fragment_floor(len(big)):] not in out
    assert big[:1000] not in out
    assert out.startswith("log line without secrets\n")
    assert out.count(REDACTED) >= 2


def test_the_matcher_of_a_secret_set_is_built_once() -> None:
    value = random.token_hex(500)
    first = secrets_module.matcher_for([value])
    assert secrets_module.matcher_for([value]) is first


def test_a_secret_urls_origin_stays_readable_its_path_and_user_info_do_not() -> None:
    url = "https://hooks.example.com/services/T0AAAA/B0BBBB/xyzSECRETxyz123"
    out = redact("cannot reach https://hooks.example.com/services/T0AAAA/B0BBBB: refused",
                 [Secret(url)])
    assert out == f"cannot reach https://hooks.example.com/{REDACTED}: refused"
    dsn = "postgresql://app:hunter2hunter2@db.internal:5432/shop"
    assert "hunter2" not in redact("dsn postgresql://app:hunter2hunter2@db", [Secret(dsn)])
