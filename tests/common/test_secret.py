"""A Secret never shows its value: not in repr, str, format, logs, tracebacks or JSON."""

from __future__ import annotations

import json
import logging
import pickle
import traceback

import pytest

from common.secret import Secret, reveal

VALUE = "Horse-battery-9"


def test_every_way_of_printing_it_is_redacted() -> None:
    secret = Secret(VALUE)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>40}",
             "%s" % secret, "%r" % (secret,),  # noqa: UP031 (the old formatting too)
             repr([secret]), repr({"password": secret})]
    assert not any(VALUE in text for text in shown)
    assert all("********" in text for text in shown)


def test_logs_and_tracebacks_with_locals_do_not_carry_it(caplog) -> None:
    secret = Secret(VALUE)
    with caplog.at_level(logging.INFO):
        logging.getLogger("adhoc.test").info("password=%s %r", secret, secret)
    assert VALUE not in caplog.text

    def fails(password: Secret) -> None:
        raise RuntimeError("boom")

    try:
        fails(secret)
    except RuntimeError as exc:
        rendered = "".join(traceback.TracebackException.from_exception(
            exc, capture_locals=True).format())
    assert "boom" in rendered and VALUE not in rendered


def test_it_refuses_to_travel_by_accident() -> None:
    with pytest.raises(TypeError):
        json.dumps({"password": Secret(VALUE)})
    with pytest.raises(TypeError):
        pickle.dumps(Secret(VALUE))
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


def test_reveal_and_comparison() -> None:
    secret = Secret(VALUE)
    assert secret.reveal() == VALUE == reveal(secret) == reveal(VALUE)
    assert secret == Secret(VALUE) and secret != Secret("other")
    assert Secret(secret).reveal() == VALUE
    assert bool(secret) and not Secret("") and len(secret) == len(VALUE)
