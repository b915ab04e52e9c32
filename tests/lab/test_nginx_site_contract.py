"""The app contract's nginx site on web-1's real nginx: static and media locations served
from the release and from a shared path, and TLS with a self-signed certificate made on
the controller (the ``cryptography`` package). web-1's /etc/nginx is put back afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import signal
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploykit.connection import Connection
from deploykit.result import Status
from deploykit.tasks import nginx
from deploykit.testing.idempotence import assert_idempotent as apply_twice
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab

HOST = "web-1"
APP = "dkshop"
SITE = "shop.test"
ROOT = f"/srv/{APP}"
TLS_DIR = "/etc/nginx/dk-tls"
SNAPSHOT = "/root/dk-contract-nginx-snapshot"


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for shop.test and its key, PEM (made here, on the controller)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SITE)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SITE)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def web(clean_lab: Lab) -> Iterator[Lab]:
    """web-1's /etc/nginx snapshotted and put back; an app backend on 127.0.0.1:8001."""
    clean_lab.nsenter(HOST, ["sh", "-c", f"rm -rf {SNAPSHOT} && cp -a /etc/nginx {SNAPSHOT}"])
    script = ("mkdir -p /srv/dk-app && echo app > /srv/dk-app/index.html && "
              "python3 -m http.server 8001 --bind 127.0.0.1 --directory /srv/dk-app "
              "</dev/null >/dev/null 2>&1 & echo $!")
    pid = int(clean_lab.nsenter(HOST, ["sh", "-c", script]).stdout)
    try:
        clean_lab.nsenter(HOST, ["sh", "-c", "i=0; until curl -sf http://127.0.0.1:8001/ >"
                                 "/dev/null; do i=$((i+1)); [ $i -lt 100 ] || exit 1; "
                                 "sleep 0.05; done"])
        yield clean_lab
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        clean_lab.nsenter(HOST, ["sh", "-c",
                                 f"find /etc/nginx -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + "
                                 f"&& cp -a {SNAPSHOT}/. /etc/nginx/ && rm -rf {SNAPSHOT} && "
                                 f"nginx -s reload; rm -rf {ROOT} /srv/dk-app"])


def get(address: str, path: str, *, tls_cert: bytes | None = None) -> tuple[int, str]:
    """GET through nginx from the controller (https trusting only ``tls_cert``)."""
    conn: http.client.HTTPConnection
    if tls_cert is not None:
        context = ssl.create_default_context(cadata=tls_cert.decode())
        context.check_hostname = False  # the address is an IP; the chain is still verified
        conn = http.client.HTTPSConnection(address, 443, context=context, timeout=10)
    else:
        conn = http.client.HTTPConnection(address, 80, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": SITE})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        conn.close()


def test_static_and_media_locations_and_tls(lab_connection: Callable[[str], Connection],
                                            web: Lab) -> None:
    conn = lab_connection(HOST)
    cert, key = self_signed()
    conn.run(["mkdir", "-p", f"{ROOT}/releases/v1/staticfiles/notes", f"{ROOT}/shared/media",
              TLS_DIR])
    conn.run(["ln", "-sfn", f"{ROOT}/releases/v1", f"{ROOT}/current"])
    conn.put(b"body{}\n", f"{ROOT}/releases/v1/staticfiles/notes/site.css", mode=0o644)
    conn.put(b"uploaded\n", f"{ROOT}/shared/media/up.txt", mode=0o644)
    conn.put(cert, f"{TLS_DIR}/shop.crt", mode=0o644)
    conn.put(key, f"{TLS_DIR}/shop.key", mode=0o600)

    assert nginx.switch(APP, "blue", colors={"blue": 8001}).run(conn).status is Status.CHANGED
    site = nginx.site(APP, SITE, locations=[
        nginx.StaticLocation("/static/", f"{ROOT}/current/staticfiles/", expires="7d"),
        nginx.StaticLocation("/media/", f"{ROOT}/shared/media/")],
        tls=nginx.Tls(f"{TLS_DIR}/shop.crt", f"{TLS_DIR}/shop.key"))
    apply_twice(conn, site)
    address = web.address(HOST)
    assert get(address, "/static/notes/site.css") == (200, "body{}")
    assert get(address, "/media/up.txt") == (200, "uploaded")
    assert get(address, "/") == (200, "app")
    assert get(address, "/static/missing.css")[0] == 404  # served by nginx, not the app
    assert get(address, "/", tls_cert=cert) == (200, "app")
    assert get(address, "/static/notes/site.css", tls_cert=cert) == (200, "body{}")

    # a new release's static files are served once "current" points to it
    conn.run(["mkdir", "-p", f"{ROOT}/releases/v2/staticfiles/notes"])
    conn.put(b"body{color:red}\n", f"{ROOT}/releases/v2/staticfiles/notes/site.css")
    conn.run(["ln", "-sfn", f"{ROOT}/releases/v2", f"{ROOT}/current"])
    assert get(address, "/static/notes/site.css") == (200, "body{color:red}")

    # plain HTTP redirected to https
    redirect = nginx.site(APP, SITE, tls=nginx.Tls(f"{TLS_DIR}/shop.crt", f"{TLS_DIR}/shop.key",
                                                  redirect_http=True))
    assert redirect.run(conn).status is Status.CHANGED
    status, _ = get(address, "/x?y=1")
    assert status == 301
    assert get(address, "/", tls_cert=cert) == (200, "app")


def test_a_missing_certificate_is_refused_by_nginx_and_nothing_changes(
        lab_connection: Callable[[str], Connection], web: Lab) -> None:
    conn = lab_connection(HOST)
    assert nginx.switch(APP, "blue", colors={"blue": 8001}).run(conn).status is Status.CHANGED
    before = conn.run(["ls", "/etc/nginx/sites-enabled"], write=False).stdout
    result: Any = nginx.site(APP, SITE, tls=nginx.Tls(f"{TLS_DIR}/none.crt",
                                                      f"{TLS_DIR}/none.key")).run(conn)
    assert result.status is Status.FAILED
    assert "none.crt" in result.message
    assert conn.run(["ls", "/etc/nginx/sites-enabled"], write=False).stdout == before
