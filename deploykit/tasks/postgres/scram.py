"""SCRAM-SHA-256 password verifiers, computed on the controller as PostgreSQL stores them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata

from deploykit.secrets import Secret

SCRAM_ITERATIONS = 4096
"""PostgreSQL's default SCRAM iteration count (``scram_iterations`` from 16 on)."""


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL hashes for ``password`` (its ``pg_saslprep``, RFC 4013).

    ASCII is used as is; otherwise the text is mapped and NFKC-normalised, and
    if the result holds a prohibited or unassigned character or breaks the
    bidi rules, PostgreSQL falls back to the raw UTF-8 bytes: so does this.
    """
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    # non-ASCII spaces first (U+200B is in both tables: PostgreSQL makes it a space)
    mapped = "".join(" " if stringprep.in_table_c12(c) else "" if stringprep.in_table_b1(c)
                     else c for c in password)
    text = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if not text or any(check(c) for c in text for check in prohibited):
        return raw
    if any(stringprep.in_table_d1(c) for c in text) and (
            any(stringprep.in_table_d2(c) for c in text)
            or not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1]))):
        return raw
    return text.encode()


def _scram_keys(password: Secret, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password.reveal()), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: Secret, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """A ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` verifier for ``password``,
    as PostgreSQL stores it in ``pg_authid.rolpassword`` (random 16-byte salt by default).

    Roles get their password as this verifier, so the password itself never
    reaches the server, its logs or ``pg_stat_activity``.
    """
    salt = os.urandom(16) if salt is None else salt
    stored, server = _scram_keys(password, salt, iterations)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def scram_matches(verifier: str | None, password: Secret) -> bool:
    """True when the stored SCRAM-SHA-256 ``verifier`` was made from ``password``.

    Recomputes StoredKey and ServerKey with the verifier's salt and iteration
    count. Anything else (None, an md5 hash, a malformed verifier) is False.
    """
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if match is None:
        return False
    try:
        iterations = int(match[1])
        salt, stored, server = (base64.b64decode(match[i], validate=True) for i in (2, 3, 4))
    except (ValueError, binascii.Error):
        return False
    if not 0 < iterations <= 10_000_000:
        return False
    want_stored, want_server = _scram_keys(password, salt, iterations)
    return hmac.compare_digest(stored, want_stored) and hmac.compare_digest(server, want_server)
