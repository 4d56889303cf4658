"""Technicians' SSH public keys (for `ssh -J`): read one, and refuse keys too weak to trust.

The relay accepts Ed25519 and ECDSA keys (with or without a security key) and RSA keys of
MIN_RSA_BITS or more, signed with SHA-2 (common/transport.py SIGNATURE_ALGS). DSA is refused:
OpenSSH itself dropped it.
"""

from __future__ import annotations

import asyncssh

MIN_RSA_BITS = 2048
ACCEPTED = (b"ssh-ed25519", b"sk-ssh-ed25519@openssh.com", b"ecdsa-sha2-nistp256",
            b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521", b"sk-ecdsa-sha2-nistp256@openssh.com",
            b"ssh-rsa")
HOW_TO_MAKE_ONE = "make a new one with `ssh-keygen -t ed25519`"


def key_weakness(key: asyncssh.SSHKey) -> str | None:
    """Why the relay will not accept this key for a technician, or None."""
    algorithm = key.algorithm
    if algorithm not in ACCEPTED:
        name = algorithm.decode(errors="replace")
        if algorithm == b"ssh-dss":
            return f"DSA keys (ssh-dss) are too weak and no longer accepted: {HOW_TO_MAKE_ONE}"
        return f"{name} keys are not accepted: {HOW_TO_MAKE_ONE}"
    if algorithm == b"ssh-rsa":
        bits = key.pyca_key.key_size
        if bits < MIN_RSA_BITS:
            return (f"this RSA key has {bits} bits, fewer than the {MIN_RSA_BITS} the relay "
                    f"accepts: {HOW_TO_MAKE_ONE}")
    return None


def read_public_key(data: str | bytes) -> str:
    """The key in OpenSSH's one-line form; ValueError with a sentence when it is not an
    OpenSSH public key or is too weak."""
    try:
        key = asyncssh.import_public_key(data)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise ValueError("this is not an OpenSSH public key (ssh-ed25519 AAAA...)") from None
    weakness = key_weakness(key)
    if weakness is not None:
        raise ValueError(weakness)
    return key.export_public_key("openssh").decode().strip()
