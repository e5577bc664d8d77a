"""The state model's bookkeeping: saved TPOT, token records, the ring's active pointer."""

from __future__ import annotations

import pytest

from conftest import make_instance, make_request
from ecoserve.brain.state import KVReservation, MacroInstanceState, reserved_tokens


def test_saved_tpot_is_tokens_times_slo_minus_time_since_first_token():
    r = make_request("r", first=10.0)
    r.generated = 20
    assert r.saved_tpot(0.1, now=11.5) == pytest.approx(20 * 0.1 - 1.5)
    assert make_request("unstarted").saved_tpot(0.1, now=5.0) == 0.0


def test_token_records_give_ttft_and_tpot():
    inst = make_instance("a", requests=[make_request("r", arrival=1.0)])
    inst.record_tokens("r", 1, now=1.5)
    inst.record_tokens("r", 4, now=2.3)
    r = inst.requests["r"]
    assert (r.generated, r.ttft()) == (5, 0.5)
    assert r.tpot() == pytest.approx(0.8 / 4)
    done = inst.record_finish("r", now=2.3)
    assert done.finished and "r" not in inst.requests


def test_reservation_modes():
    r = make_request("r", prompt=100, predicted=50)
    r.generated = 70
    assert reserved_tokens(r, KVReservation.PROMPT) == 170
    assert reserved_tokens(r, KVReservation.PROMPT_AND_OUTPUT) == 170
    r.generated = 10
    assert reserved_tokens(r, KVReservation.PROMPT) == 110
    assert reserved_tokens(r, KVReservation.PROMPT_AND_OUTPUT) == 150


@pytest.mark.parametrize(("active", "removed", "expected_active_id"), [(1, "a", "b"), (1, "b", "c"), (2, "c", "a")])
def test_removing_an_instance_keeps_the_active_pointer_sensible(active, removed, expected_active_id):
    state = MacroInstanceState([make_instance(i) for i in "abc"], active=active)
    state.remove_instance(removed)
    assert state.instances[state.active].id == expected_active_id


def test_ring_rejects_duplicate_ids_and_bad_pointer():
    with pytest.raises(ValueError, match="unique"):
        MacroInstanceState([make_instance("a"), make_instance("a")])
    with pytest.raises(ValueError, match="active"):
        MacroInstanceState([make_instance("a")], active=3)
    state = MacroInstanceState([make_instance("a")])
    with pytest.raises(ValueError, match="already"):
        state.add_instance(make_instance("a"))
