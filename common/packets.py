"""Cheaper AES-GCM packets in asyncssh: fewer copies of each packet's bytes on every leg.

asyncssh builds an outgoing packet by concatenating its parts four times over (channel
header, message type, padding, the cipher's output and its tag) and makes a new AES-GCM
context for every packet it encrypts or decrypts. A 32 KiB packet, the size OpenSSH clients
take, was copied about ten times on its way to the socket, on each of the agent's two SSH
layers and again at the relay. In a download through the relay, that work is what the two
cores of this box ran out of first (docs/BENCHMARKS.md, "Fewer copies per packet").

Once a connection is authenticated and its keys are in use, a packet on AES-GCM without
compression is built here in one join, encrypted by one cached context, and sent as one
buffer; the sequence number, the rekey byte count, the IV and asyncssh's packet log are kept
exactly as asyncssh keeps them. Anything else (key exchange, authentication, a pending rekey,
another cipher, compression) takes asyncssh's own path. The wire bytes are the same: only
where the copies happen changes. This replaces private parts of asyncssh (SSHConnection's
send_packet, GCMEncryption's packet methods), only where they have the shape this was written
against; elsewhere nothing changes.
"""

from __future__ import annotations

import inspect
import os
import time

_FAST = "_adhoc_fast_packets"


def _aead(cipher):
    """The cipher's AES-GCM context, made once per key (asyncssh makes one per packet)."""
    aead = cipher.__dict__.get("_adhoc_aead")
    if aead is None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = cipher.__dict__["_adhoc_aead"] = AESGCM(cipher._key)
    return aead


def _shapes_match() -> bool:
    from asyncssh.channel import SSHChannel
    from asyncssh.connection import SSHConnection
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption

    def params(func) -> list[str]:
        try:
            return list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return []

    send = getattr(SSHConnection.send_packet, "original", SSHConnection.send_packet)
    return (params(send) == ["self", "pkttype", "args", "handler"]
            and params(SSHChannel.send_packet) == ["self", "pkttype", "args"]
            and {"_send_chan", "_conn"} <= set(SSHChannel.__init__.__code__.co_names)
            and params(GCMEncryption.decrypt_packet)
            == ["self", "seq", "first", "rest", "header_len", "mac"]
            and params(GCMCipher._update_iv) == ["self"]
            and {"_key", "_iv"} <= set(GCMCipher.__init__.__code__.co_names))


def faster_gcm_packets() -> bool:
    """Install the cheaper path in this process (once). Returns whether it is in use."""
    from asyncssh.channel import SSHChannel
    from asyncssh.connection import MSG_KEX_LAST, SSHConnection
    from asyncssh.encryption import GCMEncryption
    from asyncssh.logging import SSHLogger
    from cryptography.exceptions import InvalidTag

    if getattr(SSHConnection.send_packet, _FAST, False):
        return True
    # No IGNORE goes before a packet here: only where skip_needless_ignores took.
    if not getattr(SSHConnection.send_packet, "skips_needless_ignores", False) \
            or not _shapes_match():
        return False

    def decrypt_packet(self, seq, first, rest, header_len, mac):
        cipher = self._cipher
        try:
            data = _aead(cipher).decrypt(cipher._iv, b"".join((first[header_len:], rest, mac)),
                                         first[:header_len])
        except InvalidTag:
            data = None
        cipher._update_iv()
        return data

    slower = SSHConnection.send_packet
    urandom = os.urandom
    monotonic = time.monotonic

    def send_packet(self, pkttype, *args, handler=None):
        encryption = self._send_encryption
        if (pkttype <= MSG_KEX_LAST or type(encryption) is not GCMEncryption
                or not self._kex_complete or not self._auth_complete or self._compressor
                or self._rekey_bytes_sent >= self._rekey_bytes
                or (self._rekey_seconds and monotonic() >= self._rekey_time)):
            slower(self, pkttype, *args, handler=handler)
            return
        size = 1 + sum(map(len, args))
        padlen = -(self._send_enchdrlen + size) % self._send_blocksize
        if padlen < 4:
            padlen += self._send_blocksize
        pktlen = 1 + size + padlen
        header = pktlen.to_bytes(4, "big")
        plain = b"".join((bytes((padlen, pkttype)), *args, urandom(padlen)))
        cipher = encryption._cipher
        self._send(header + _aead(cipher).encrypt(cipher._iv, plain, header))
        cipher._update_iv()
        seq = self._send_seq
        self._send_seq = (seq + 1) & 0xffffffff
        self._rekey_bytes_sent += pktlen
        if SSHLogger._debug_level >= 3:  # asyncssh logs packets only from level 3
            (handler or self).log_sent_packet(pkttype, seq, plain[1:1 + size])

    def channel_send_packet(self, pkttype, *args):
        # asyncssh joins the channel number and the args here, and send_packet joins them
        # again: handing them on unjoined saves a copy of every data packet.
        if self._send_chan is not None:
            self._conn.send_packet(pkttype, self._send_chan.to_bytes(4, "big"), *args,
                                   handler=self)

    for name in ("skips_needless_ignores", "original"):  # what bench/ and the checks read
        if hasattr(slower, name):
            setattr(send_packet, name, getattr(slower, name))
    setattr(send_packet, _FAST, True)
    send_packet.slower = slower  # type: ignore[attr-defined]  # bench/ compares with them
    decrypt_packet.slower = GCMEncryption.decrypt_packet  # type: ignore[attr-defined]
    channel_send_packet.slower = SSHChannel.send_packet  # type: ignore[attr-defined]
    GCMEncryption.decrypt_packet = decrypt_packet  # type: ignore[method-assign]
    SSHChannel.send_packet = channel_send_packet  # type: ignore[method-assign]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    return True
