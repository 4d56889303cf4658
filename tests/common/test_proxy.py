"""Which proxy a connection to the relay takes: the environment as curl reads it, NO_PROXY
alone deciding what goes direct, credentials never shown."""

from __future__ import annotations

import pytest

from common.proxy import ProxySettingError, bypasses, proxy_for


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), [
    ("", "relay.example", 443, False),
    ("*", "relay.example", 443, True),
    ("example", "relay.example", 443, True),
    ("relay.example", "relay.example", 443, True),
    (".example", "relay.example", 443, True),
    ("lay.example", "relay.example", 443, False),  # whole labels only
    ("RELAY.example.", "relay.EXAMPLE", 443, True),
    ("relay.example:8443", "relay.example", 443, False),
    ("relay.example:443", "relay.example", 443, True),
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.1.2.3", 443, False),
    ("192.0.2.7", "192.0.2.7", 8722, True),
    ("::1", "::1", 443, True),
    ("[::1]:443", "::1", 443, True),
    ("fd00::/8", "fd00::2", 443, True),
    # No hidden exception: loopback goes through the proxy unless NO_PROXY names it.
    ("", "127.0.0.1", 443, False),
    ("", "localhost", 443, False),
    ("localhost,127.0.0.1", "127.0.0.2", 443, False),
    ("example.com, relay.example", "relay.example", 443, True),
])
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert bypasses(host, port, no_proxy) is direct


def test_the_scheme_picks_the_variable_and_lower_case_wins() -> None:
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "lower:3129",
           "HTTP_PROXY": "http://plain:8080"}
    secure = proxy_for("https", "relay.example", 443, env)
    assert (secure.host, secure.port, secure.variable) == ("lower", 3129, "HTTPS_PROXY")
    plain = proxy_for("http", "relay.example", 80, env)
    assert (plain.host, plain.port) == ("plain", 8080)
    assert proxy_for("https", "relay.example", 443, {**env, "no_proxy": "*"}) is None
    assert proxy_for("https", "relay.example", 443, {}) is None


def test_credentials_go_to_the_proxy_and_nowhere_else() -> None:
    proxy = proxy_for("https", "relay.example", 443,
                      {"HTTPS_PROXY": "http://me%40corp:p%3Ass@proxy.corp:3128"})
    assert proxy.user == "me@corp"
    assert proxy.password.reveal() == "p:ss"
    assert proxy.authorization() == "Basic bWVAY29ycDpwOnNz"
    shown = f"{proxy} {proxy!r}"
    assert "p:ss" not in shown and "p%3Ass" not in shown
    assert str(proxy) == "proxy proxy.corp:3128 (HTTPS_PROXY)"


@pytest.mark.parametrize(("value", "words"), [
    ("socks5://proxy:1080", "names a socks5:// proxy"),
    ("https://proxy:3128", "names a https:// proxy"),
    ("http://proxy:notaport", "has no valid port"),
    ("http://:3128", "names no proxy host"),
    ("http://[proxy.corp:3128", "cannot be read as a URL"),
])
def test_a_proxy_setting_that_cannot_work_is_refused_in_words(value: str, words: str) -> None:
    with pytest.raises(ProxySettingError, match=words):
        proxy_for("https", "relay.example", 443, {"HTTPS_PROXY": value})
