"""TLS to the relay: the system's trust store (SSL_CERT_FILE honoured) and the pin a join link
may carry, so that a rogue certificate authority on a customer's network cannot intercept.

A pin is the SHA-256 of the certificate's public key (its SubjectPublicKeyInfo), base64: the
same value as curl's `--pinnedpubkey sha256//…` and HPKP's `pin-sha256`. It survives a
certificate renewal that keeps the key. A pinned connection needs both a certificate the
system trusts and that key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PIN_PREFIX = "sha256="


class PinMismatch(ssl.SSLCertVerificationError):
    """The relay showed a certificate the system trusts but not the key the link names."""


def spki_pin(certificate: bytes) -> str:
    """The pin of a certificate, PEM or DER: base64 of SHA-256 of its public key."""
    if certificate.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(certificate)
    else:
        cert = x509.load_der_x509_certificate(certificate)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def valid_pin(pin: str) -> bool:
    try:
        return len(base64.b64decode(pin, validate=True)) == 32
    except ValueError:
        return False


def client_context(pin: str | None = None) -> ssl.SSLContext:
    """A client context that trusts the system's store (OpenSSL's default paths, so
    SSL_CERT_FILE and SSL_CERT_DIR apply) and, given a pin, only that public key."""
    context = ssl.create_default_context()
    if pin:
        _pin_context(context, pin)
    return context


def _pin_context(context: ssl.SSLContext, pin: str) -> None:
    expected = pin.encode("ascii")

    def check(der: bytes | None) -> None:
        got = spki_pin(der).encode("ascii") if der else b""
        if not hmac.compare_digest(got, expected):
            raise PinMismatch("the relay's certificate is not the one its link names: someone "
                              "on this network may be intercepting the connection")

    class PinnedObject(ssl.SSLObject):  # asyncio and every library on it use wrap_bio
        def do_handshake(self) -> None:
            super().do_handshake()
            check(self.getpeercert(binary_form=True))

    class PinnedSocket(ssl.SSLSocket):  # blocking sockets use wrap_socket
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self.getpeercert(binary_form=True))

    context.sslobject_class = PinnedObject
    context.sslsocket_class = PinnedSocket
