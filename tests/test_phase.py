"""The instance phase policy: prefill priority behind a router, TD-Pipe's rules standalone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import LinearStepModel, make_request
from ecoserve.brain.phase import (
    PhaseMode,
    PhasePolicySettings,
    decode_intensity,
    greedy_admission,
    next_phase,
    predicted_peak_blocks,
    prefill_intensity,
    usage_profile,
)
from ecoserve.brain.state import Phase

MODEL = LinearStepModel(fixed=0.01, per_token=0.001)
OFFSETS = (0, 5, 8, 16)
TDPIPE = PhasePolicySettings(mode=PhaseMode.TDPIPE)


def test_usage_profile_and_peak_by_hand():
    r = make_request("r", prompt=16, predicted=10)
    # offset 0: 16 tokens = 1 block; 5 and 8: 21/24 tokens = 2 blocks; 16: predicted to have finished.
    assert usage_profile(r, 16, OFFSETS) == [1, 2, 2, 0]
    assert predicted_peak_blocks([r, make_request("s", prompt=16, predicted=10)], 16, OFFSETS) == 4


def test_greedy_admission_stops_at_the_peak_bound():
    running = [make_request(f"d{k}", prompt=16, predicted=10, first=0.0) for k in range(3)]  # peak 6
    waiting = [make_request(f"w{k}", prompt=16, predicted=10) for k in range(5)]
    admitted = greedy_admission(waiting, running, total_blocks=12, block_size=16, bound=0.9, offsets=OFFSETS)
    # peak 6 + 2 per admitted must stay < 10.8: two fit (10), a third would make 12.
    assert [r.id for r in admitted] == ["w0", "w1"]


def test_greedy_admission_admits_one_request_into_an_empty_engine_even_if_pessimistic():
    big = make_request("w", prompt=100, predicted=10_000)
    assert greedy_admission([big], [], 10, 16, 0.9, OFFSETS) == [big]
    assert greedy_admission([make_request("x", prompt=1000)], [], 10, 16, 0.9, OFFSETS) == []


def test_prefill_priority_prefills_whatever_fits_then_decodes():
    s = PhasePolicySettings()
    running = [make_request("d", prompt=32, first=0.0)]  # 3 blocks with its first token
    waiting = [make_request("a", prompt=32), make_request("b", prompt=64), make_request("c", prompt=16)]
    d = next_phase(Phase.DECODE, waiting, running, 8, 16, MODEL, s)
    assert (d.phase, d.admit) == (Phase.PREFILL, ("a",))  # b needs 4 blocks of the 3 left: FCFS stops
    assert next_phase(Phase.PREFILL, [], running, 8, 16, MODEL, s).phase is Phase.DECODE
    assert next_phase(Phase.DECODE, [], [], 8, 16, MODEL, s).phase is Phase.IDLE
    full = next_phase(Phase.DECODE, [make_request("x", prompt=200)], running, 8, 16, MODEL, s)
    assert (full.phase, full.reason) == (Phase.DECODE, "kv_full")


def test_decode_intensity_by_hand():
    running = [make_request(f"d{k}", prompt=10, first=0.0) for k in range(10)]
    # t(b) = 0.01 + 0.001·b: (10/0.02) / (256/0.266)
    assert decode_intensity(MODEL, running, TDPIPE) == pytest.approx((10 / 0.02) / (256 / 0.266))
    sat = PhasePolicySettings(mode=PhaseMode.TDPIPE, decode_saturation=10)
    assert decode_intensity(MODEL, running, sat) == 1.0


def test_prefill_intensity_by_hand():
    cands = [make_request("a", prompt=100), make_request("b", prompt=200)]
    assert prefill_intensity(MODEL, cands, 12, TDPIPE) == 1.0  # one stage: no bubble
    two = PhasePolicySettings(mode=PhaseMode.TDPIPE, pipeline_stages=2)
    total = (0.11 + 0.21) / 2 + 0.21 / 2
    bubble = 0.21 / 2 - (0.01 + 0.012) / 2
    assert prefill_intensity(MODEL, cands, 12, two) == pytest.approx((total - bubble) / total)


def test_tdpipe_switches_small_decode_batches_to_prefill():
    running = [make_request(f"d{k}", prompt=10, first=0.0, predicted=20) for k in range(10)]
    waiting = [make_request("w", prompt=50, predicted=20)]
    d = next_phase(Phase.DECODE, waiting, running, 1000, 16, MODEL, TDPIPE)
    assert (d.phase, d.admit) == (Phase.PREFILL, ("w",))


def test_tdpipe_keeps_decoding_a_saturated_batch():
    sat = PhasePolicySettings(mode=PhaseMode.TDPIPE, decode_saturation=5)
    running = [make_request(f"d{k}", prompt=10, first=0.0, predicted=20) for k in range(10)]
    d = next_phase(Phase.DECODE, [make_request("w", prompt=50)], running, 1000, 16, MODEL, sat)
    assert (d.phase, d.reason) == (Phase.DECODE, "decode_saturated")


def test_tdpipe_keeps_decoding_when_pipeline_bubbles_outweigh_the_gain():
    pp4 = PhasePolicySettings(mode=PhaseMode.TDPIPE, pipeline_stages=4)
    running = [make_request(f"d{k}", prompt=10, first=0.0, predicted=20) for k in range(150)]
    d = next_phase(Phase.DECODE, [make_request("w", prompt=2000)], running, 10_000, 16, MODEL, pp4)
    assert d.phase is Phase.DECODE and d.reason.startswith("intensity")


def test_tdpipe_returns_to_decode_when_the_predicted_peak_is_reached():
    running = [make_request(f"d{k}", prompt=16, predicted=10, first=0.0) for k in range(5)]  # peak 10
    d = next_phase(Phase.PREFILL, [make_request("w", prompt=16, predicted=10)], running, 11, 16, MODEL, TDPIPE)
    assert (d.phase, d.reason) == (Phase.DECODE, "kv_peak_bound")


@given(
    lens=st.lists(st.tuples(st.integers(1, 4000), st.integers(0, 3000), st.integers(0, 300)), max_size=30),
    extra=st.tuples(st.integers(1, 4000), st.integers(0, 3000)),
)
def test_peak_never_drops_when_a_request_is_added(lens, extra):
    reqs = [make_request(f"r{k}", prompt=p, predicted=o, generated=g) for k, (p, o, g) in enumerate(lens)]
    more = [*reqs, make_request("x", prompt=extra[0], predicted=extra[1])]
    assert predicted_peak_blocks(more, 16, OFFSETS) >= predicted_peak_blocks(reqs, 16, OFFSETS)
