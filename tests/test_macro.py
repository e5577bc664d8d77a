"""The macro scheduler: adaptive routing checks, rolling activation, the hold queue (hand-set clocks)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LinearStepModel, make_instance, make_request
from ecoserve.brain.kv import blocks_for_tokens
from ecoserve.brain.macro import (
    Check,
    MacroScheduler,
    MacroSchedulerSettings,
    Outcome,
    SlackAggregate,
    prefill_finish_offsets,
)
from ecoserve.brain.state import SLO, KVReservation, MacroInstanceState, reserved_tokens

SLO_1S = SLO(ttft=1.0, tpot=0.1, attainment=0.9)
MODEL = LinearStepModel(fixed=0.01, per_token=0.001)  # a 100-token prefill takes 0.11 s


def scheduler(**kw) -> MacroScheduler:
    return MacroScheduler(MacroSchedulerSettings(slo=SLO_1S, **kw), MODEL)


def ring(*instances, active: int = 0) -> MacroInstanceState:
    return MacroInstanceState(instances=list(instances), active=active)


def test_empty_active_instance_takes_the_request_without_rolling():
    state = ring(make_instance("a"), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r"), now=0.0)
    assert (d.outcome, d.instance_id, d.rolled) == (Outcome.ROUTE, "a", False)
    assert "r" in state.instances[0].requests
    assert state.instances[0].last_activation == 0.0


def test_prefill_offsets_batch_fcfs_under_the_token_budget_and_chunk_long_prompts():
    # budget 150: [100, 50 of 120] -> 0.01+0.15; [70 of 120, 30] -> 0.01+0.1
    offsets = prefill_finish_offsets(MODEL, [100, 120, 30], budget=150)
    assert offsets == pytest.approx([0.16, 0.27, 0.27])


def test_ttft_check_rolls_to_next_instance_when_pending_prefills_would_be_late():
    # 9 pending 100-token prompts: one step of 900 tokens = 0.91 s. A 10th makes it 1.01 s > 1 s TTFT.
    pending = [make_request(f"p{k}", arrival=0.0) for k in range(9)]
    state = ring(make_instance("a", requests=pending), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r"), now=0.0)
    assert d.checks[0].result is Check.TTFT
    assert d.checks[0].prefill_time == pytest.approx(1.01)
    assert (d.outcome, d.instance_id, d.rolled) == (Outcome.ROUTE, "b", True)
    assert state.active == 1


def test_ttft_check_passes_when_it_still_fits():
    pending = [make_request(f"p{k}", arrival=0.0) for k in range(8)]
    state = ring(make_instance("a", requests=pending), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r"), now=0.0)
    assert d.instance_id == "a" and d.checks[0].prefill_time == pytest.approx(0.91)


def test_time_already_waited_counts_against_the_ttft_slo():
    pending = [make_request(f"p{k}", arrival=0.0) for k in range(3)]  # 0.31 s of prefill, +0.11 with r
    state = ring(make_instance("a", requests=pending), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r", arrival=0.6), now=0.6)
    # p's waited 0.6 s: 0.6 + 0.41 > 1 while 0.6 + 0.31 <= 1, so r would make them late.
    assert d.checks[0].result is Check.TTFT and d.instance_id == "b"


def test_request_already_too_late_everywhere_is_still_routed():
    state = ring(make_instance("a"), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r", arrival=-5.0), now=0.0)
    assert (d.outcome, d.instance_id) == (Outcome.ROUTE, "a")


def mixed_decodes() -> list:
    # At t=0.5: nine decodes with saved = 1·0.1 − 0.5 = −0.4, one with saved = 100·0.1 − 0.5 = 9.5.
    late = [make_request(f"d{k}", first=0.0, generated=1) for k in range(9)]
    return [*late, make_request("d9", first=0.0, generated=100)]


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [(SlackAggregate.MEAN, "a"), (SlackAggregate.MAX, "a"), (SlackAggregate.QUANTILE, "b")],
)
def test_slack_aggregates_differ_on_a_skewed_batch(aggregate, expected):
    state = ring(make_instance("a", requests=mixed_decodes()), make_instance("b"))
    (d,) = scheduler(slack_aggregate=aggregate).submit(state, make_request("r", arrival=0.5), now=0.5)
    # pause = one decode step of 10 (0.02 s) + r's prefill (0.11 s); the mean slack is 0.59 s.
    assert d.checks[0].prefill_time == pytest.approx(0.13)
    assert d.instance_id == expected
    if expected == "b":
        assert d.checks[0].result is Check.SLACK


def test_quantile_slack_accepts_when_the_attainment_share_keeps_its_slack():
    decodes = [make_request(f"d{k}", first=0.0, generated=20) for k in range(10)]  # saved = 1.5 each
    state = ring(make_instance("a", requests=decodes), make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r", arrival=0.5), now=0.5)
    assert d.instance_id == "a"


@pytest.mark.parametrize(("mode", "expected"), [(KVReservation.PROMPT_AND_OUTPUT, "b"), (KVReservation.PROMPT, "a")])
def test_kv_check_counts_the_predicted_output_when_set(mode, expected):
    # 10 blocks of 16 = 160 tokens; r needs 100 prompt (7 blocks) + 100 predicted (13 blocks in all).
    state = ring(make_instance("a", blocks=10), make_instance("b"))
    (d,) = scheduler(kv_reservation=mode).submit(state, make_request("r", predicted=100), now=0.0)
    assert d.instance_id == expected


def test_observed_kv_usage_tightens_the_router_accounting():
    a = make_instance("a", blocks=10)
    a.kv_blocks_used_observed = 9
    state = ring(a, make_instance("b"))
    (d,) = scheduler(kv_reservation=KVReservation.PROMPT).submit(state, make_request("r"), now=0.0)
    assert d.checks[0].result is Check.KV and d.instance_id == "b"


def test_request_too_large_for_every_instance_is_rejected_with_reason():
    state = ring(make_instance("a", blocks=10), make_instance("b", blocks=10))
    (d,) = scheduler().submit(state, make_request("r", prompt=500), now=0.0)
    assert (d.outcome, d.reason) == (Outcome.REJECT, "too_large")
    assert not state.held


def test_draining_instance_is_skipped():
    a = make_instance("a")
    a.accepting = False
    state = ring(a, make_instance("b"))
    (d,) = scheduler().submit(state, make_request("r"), now=0.0)
    assert d.checks[0].result is Check.DRAINING and d.instance_id == "b"


def test_activation_tries_instances_in_ring_order_from_the_active_one():
    state = ring(
        make_instance("a"),
        make_instance("b", requests=[make_request(f"b{k}") for k in range(10)]),
        make_instance("c", requests=[make_request(f"c{k}") for k in range(10)]),
        active=1,
    )
    (d,) = scheduler().submit(state, make_request("r"), now=0.0)
    assert [c.instance_id for c in d.checks] == ["b", "c", "a"]
    assert d.instance_id == "a" and state.active == 0


def busy_ring() -> MacroInstanceState:
    return ring(*(make_instance(i, requests=[make_request(f"{i}{k}") for k in range(10)]) for i in "ab"))


def test_hold_then_retry_when_capacity_frees():
    state = busy_ring()
    s = scheduler()
    # r (arriving at 0.9) would make itself late behind ten pending prompts on either instance.
    (d,) = s.submit(state, make_request("r", arrival=0.9), now=0.9)
    assert (d.outcome, d.reason) == (Outcome.HOLD, "no_instance_fits")
    assert [h.id for h in state.held] == ["r"]
    assert s.retry_held(state, now=0.9) == []
    for k in range(10):
        state.instances[1].record_tokens(f"b{k}", 5, now=1.0)  # saved TPOT 0.5 s each
    (d2,) = s.retry_held(state, now=1.0)
    assert (d2.request_id, d2.outcome, d2.instance_id) == ("r", Outcome.ROUTE, "b")
    assert not state.held


def test_new_requests_queue_behind_held_ones_and_overflow_is_rejected():
    state = busy_ring()
    s = scheduler(queue_limit=2)
    assert s.submit(state, make_request("r1"), now=0.0)[-1].outcome is Outcome.HOLD
    second = s.submit(state, make_request("r2", prompt=1), now=0.0)[-1]
    assert (second.outcome, second.reason) == (Outcome.HOLD, "queue_fifo")
    third = s.submit(state, make_request("r3"), now=0.0)[-1]
    assert (third.outcome, third.reason) == (Outcome.REJECT, "queue_full")
    assert [r.id for r in state.held] == ["r1", "r2"]


def test_submit_lets_held_requests_go_first():
    state = busy_ring()
    s = scheduler()
    s.submit(state, make_request("r1"), now=0.0)
    for k in range(10):
        state.instances[0].record_first_token(f"a{k}", now=1.0)
    decisions = s.submit(state, make_request("r2"), now=1.0)
    assert [(d.request_id, d.outcome) for d in decisions] == [("r1", Outcome.ROUTE), ("r2", Outcome.ROUTE)]


def test_settings_reject_nonsense():
    with pytest.raises(ValueError, match="queue_limit"):
        MacroSchedulerSettings(slo=SLO_1S, queue_limit=-1)
    with pytest.raises(ValueError, match="ttft"):
        SLO(ttft=0, tpot=0.1)


# --- properties over random operation sequences --------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 700), st.integers(0, 1500)),
        st.tuples(st.just("token"), st.integers(0, 10_000), st.integers(1, 50)),
        st.tuples(st.just("finish"), st.integers(0, 10_000), st.just(0)),
        st.tuples(st.just("tick"), st.integers(1, 2000), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=ops,
    n=st.integers(1, 4),
    blocks=st.integers(20, 400),
    aggregate=st.sampled_from(list(SlackAggregate)),
    kv=st.sampled_from(list(KVReservation)),
    queue_limit=st.integers(0, 5),
)
def test_routing_invariants(ops, n, blocks, aggregate, kv, queue_limit):
    s = scheduler(slack_aggregate=aggregate, kv_reservation=kv, queue_limit=queue_limit, max_batched_tokens=2048)
    state = ring(*(make_instance(f"i{k}", blocks=blocks) for k in range(n)))
    now = 0.0
    submitted: set[str] = set()
    rejected: set[str] = set()
    finished: set[str] = set()

    def check_batch(before: MacroInstanceState, decisions, new_request=None) -> None:
        """Decisions of one call, in order: each starts at the instance the previous route activated."""
        expected_start = before.active
        routed_before = False
        for d in decisions:
            assert d.reason
            if d.checks:
                order = [c.instance_id for c in d.checks]
                assert order == [before.instances[(expected_start + k) % n].id for k in range(len(order))]
            if d.outcome is Outcome.ROUTE:
                assert all(c.result is not Check.OK for c in d.checks[:-1]) and d.checks[-1].result is Check.OK
                inst = state.instance(d.instance_id)
                assert inst.reserved_blocks(kv) <= inst.kv_blocks_total
                expected_start = before.index_of(d.instance_id)
                routed_before = True
            elif d.outcome is Outcome.HOLD and d.reason == "no_instance_fits" and not routed_before:
                # No instance passes its check: recompute every check on the state the decision saw.
                request = next((r for r in before.held if r.id == d.request_id), new_request)
                assert all(s.check(i, request, now).result is not Check.OK for i in before.instances)
            elif d.outcome is Outcome.REJECT:
                rejected.add(d.request_id)
        if decisions and any(d.outcome is Outcome.ROUTE for d in decisions):
            last = next(d for d in reversed(decisions) if d.outcome is Outcome.ROUTE)
            assert state.instances[state.active].id == last.instance_id

    for kind, a, b in ops:
        if kind == "submit":
            rid = f"r{len(submitted)}"
            request = make_request(rid, prompt=a, arrival=now, predicted=b)
            before = copy.deepcopy(state)
            decisions = s.submit(state, request, now)
            submitted.add(rid)
            assert decisions[-1].request_id == rid
            assert all(d.outcome is not Outcome.HOLD for d in decisions[:-1])
            check_batch(before, decisions, request)
        else:
            live = [(inst, r) for inst in state.instances for r in inst.requests.values()]
            if kind == "tick":
                now += a / 1000
            elif live:
                inst, r = live[a % len(live)]
                if kind == "token":
                    inst.record_tokens(r.id, b, now)
                else:
                    finished.add(inst.record_finish(r.id, now).id)
            before = copy.deepcopy(state)
            decisions = s.retry_held(state, now)
            assert all(d.outcome is not Outcome.HOLD for d in decisions)
            check_batch(before, decisions)
        for inst in state.instances:  # the incremental KV accounting equals a full recount
            for mode in KVReservation:
                recount = sum(blocks_for_tokens(reserved_tokens(r, mode)) for r in inst.requests.values())
                assert inst.reserved_blocks(mode) == recount
        on_instances = {r for inst in state.instances for r in inst.requests}
        held = {r.id for r in state.held}
        # Never lost: every request is in exactly one place.
        places = [on_instances, held, rejected, finished]
        assert sum(len(p) for p in places) == len(submitted)
        assert set().union(*places) == submitted
        assert len(held) <= queue_limit
