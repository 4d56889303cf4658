"""SSH transport settings every leg shares (relay, agent, console): a small contract module.

Measured in bench/ (docs/BENCHMARKS.md): the client's cipher order decides, and asyncssh's
default puts chacha20-poly1305 first, which costs ~0.3 ms per hop per direction; aes128-gcm
halves the relayed keystroke round trip. Larger windows and packets on the outer legs keep
more bytes in flight across the extra hop.
"""

ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
              "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr")
OUTER_WINDOW = 8 * 1024 * 1024
OUTER_PACKET = 256 * 1024


def client_options() -> dict:
    """Options for an asyncssh client connection on any Adhoc leg."""
    return {"encryption_algs": ENCRYPTION, "compression_algs": None,
            "window": OUTER_WINDOW, "max_pktsize": OUTER_PACKET}
