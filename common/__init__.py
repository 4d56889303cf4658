"""What every Adhoc program shares: the relay, the console and the temporary host.

Small contract modules with no dependency on any one program (the host's wheel ships this
package): SSH transport settings, the session-password verifier, the Secret type, and how a
program reaches the relay (proxies, TLS, SSH over WebSocket).
"""
