"""Unit tests of the pure session rules: the state machine, limits in order, codes and ids."""

from __future__ import annotations

import pytest

from relay import sessions as rules
from relay.sessions import Event, InvalidTransition, LimitError, Occupancy, State


@pytest.mark.parametrize(("state", "event", "after"), [
    (State.PENDING, Event.ACTIVATE, State.ACTIVE),
    (State.PENDING, Event.EXPIRE, State.ENDED),
    (State.PENDING, Event.END, State.ENDED),
    (State.ACTIVE, Event.EXPIRE, State.ENDED),
    (State.ACTIVE, Event.END, State.ENDED),
])
def test_allowed_transitions(state, event, after) -> None:
    assert rules.next_state(state, event) == after


@pytest.mark.parametrize(("state", "event"), [
    (State.ACTIVE, Event.ACTIVATE),
    (State.ENDED, Event.ACTIVATE),
    (State.ENDED, Event.END),
    (State.ENDED, Event.EXPIRE),
])
def test_ended_is_final_and_active_cannot_reactivate(state, event) -> None:
    with pytest.raises(InvalidTransition, match=f"cannot {event}"):
        rules.next_state(state, event)


def occupancy(plan="plus", seats=3, tech=0, company=0) -> Occupancy:
    return Occupancy(plan=plan, seats=seats, live_for_technician=tech, live_for_company=company)


def refusal(occ: Occupancy) -> LimitError:
    with pytest.raises(LimitError) as caught:
        rules.check_can_create(occ)
    return caught.value


def test_limits_allow_a_free_seat() -> None:
    rules.check_can_create(occupancy(seats=3, company=2))


def test_trial_plan_has_no_ad_hoc_support() -> None:
    error = refusal(occupancy(plan="trial"))
    assert (error.code, error.status) == ("plan", 403)
    assert "base, plus or premier" in error.detail


def test_one_live_session_per_technician() -> None:
    error = refusal(occupancy(tech=1, company=1))
    assert (error.code, error.status) == ("limit", 409)
    assert "technician limit" in error.detail


def test_five_live_sessions_per_company_even_with_more_seats() -> None:
    error = refusal(occupancy(seats=10, company=5))
    assert (error.code, error.status) == ("limit", 409)
    assert "company limit" in error.detail


def test_no_free_seat() -> None:
    error = refusal(occupancy(seats=3, company=3))
    assert (error.code, error.status) == ("no_seat", 402)
    assert "3 seats" in error.detail


def test_code_is_bound_to_its_link_and_key() -> None:
    key = b"k" * 32
    stored = rules.code_hmac(key, "link-a", "123456")
    assert rules.code_matches(key, "link-a", "123456", stored)
    assert not rules.code_matches(key, "link-a", "123457", stored)
    assert not rules.code_matches(key, "link-b", "123456", stored)
    assert not rules.code_matches(b"x" * 32, "link-a", "123456", stored)
    assert "123456" not in stored


def test_codes_and_ids_have_the_right_shape() -> None:
    codes = {rules.new_security_code() for _ in range(200)}
    assert all(rules.is_well_formed_code(c) for c in codes)
    assert len(codes) > 150
    assert not rules.is_well_formed_code("12345")
    assert not rules.is_well_formed_code("１２３４５６")  # full-width digits
    session_id = rules.new_session_id()
    assert len(session_id) == 16 and session_id == session_id.lower()
    token = rules.new_token()
    assert len(token) >= 43 and rules.token_hash(token) != token
