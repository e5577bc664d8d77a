"""The macro instance's books, shared by the router and the simulator."""

from __future__ import annotations

from conftest import LinearStepModel, make_instance
from ecoserve.brain.book import MacroBook
from ecoserve.brain.macro import MacroScheduler, MacroSchedulerSettings, Outcome
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.state import SLO
from ecoserve.brain.window import SloWindow

SLO_ = SLO(ttft=1.0, tpot=0.1)


def book(queue_limit: int = 8) -> MacroBook:
    scheduler = MacroScheduler(MacroSchedulerSettings(SLO_, queue_limit=queue_limit), LinearStepModel())
    b = MacroBook(scheduler, QuantilePredictor(min_samples=1), SloWindow(SLO_, 10.0))
    b.add_instance(make_instance("a"), 0.0)
    return b


def test_tokens_and_finish_are_booked_and_learned_from():
    b = book()
    r = b.new_request("r", 100, 7, now=0.0)
    assert r.predicted_output == 7  # the fallback, capped by max_tokens
    (d,) = b.submit(r, 0.0)
    assert d.outcome is Outcome.ROUTE and b.instance_of("r").id == "a"
    b.on_tokens(r, 1, 0.2)
    b.on_tokens(r, 6, 0.7)
    assert (r.generated, r.ttft()) == (7, 0.2)  # TPOT (0.7 - 0.2) / 6 meets 0.1
    b.on_finish(r, 0.7, "ok")
    assert b.instance_of("r") is None and not b.state.instances[0].requests
    assert b.predictor.predict(100, None) == 7
    stats = b.window.stats(1.0)
    assert (stats.requests, stats.slo_attainment) == (1, 1.0)


def test_a_first_token_lets_held_requests_in():
    b = book()
    first = [b.new_request(f"p{k}", 100, 5, 0.9) for k in range(9)]
    for r in first:
        b.submit(r, 0.9)
    late = b.new_request("late", 100, 5, 0.9)
    assert b.submit(late, 0.9)[-1].outcome is Outcome.HOLD
    decisions = []
    for r in first:
        decisions += b.on_tokens(r, 5, 1.0)  # saved TPOT 0.5 s each: enough for one more prefill
    assert [(d.request_id, d.outcome) for d in decisions] == [("late", Outcome.ROUTE)]


def test_requeue_and_instance_removal_put_unstarted_requests_first_in_line():
    b = book()
    b.add_instance(make_instance("b"), 0.0)
    r = b.new_request("r", 10, 5, 0.0)
    b.submit(r, 0.0)
    (again,) = b.requeue(r, 0.1)
    assert again.outcome is Outcome.ROUTE
    s = b.new_request("s", 10, 5, 0.2)
    b.submit(s, 0.2)
    where = b.instance_of("s").id
    moved = b.remove_instance(where, 0.3)
    assert [(d.request_id, d.outcome) for d in moved if d.request_id == "s"] == [("s", Outcome.ROUTE)]
    assert b.instance_of("s").id != where


def test_aborted_and_failed_requests():
    b = book(queue_limit=8)
    r = b.new_request("r", 10, 5, 0.0)
    b.submit(r, 0.0)
    b.on_finish(r, 0.5, "failed")
    assert b.window.stats(1.0).slo_attainment == 0.0
    q = b.new_request("q", 10, 5, 0.0)
    b.state.held.append(q)
    b.on_finish(q, 0.6, "aborted")
    assert not b.state.held and b.window.stats(1.0).requests == 1


def test_queue_full_rejections_reach_the_planners_observation_but_too_large_ones_do_not():
    b = book(queue_limit=0)
    last = [b.submit(b.new_request(f"r{k}", 100, 5, 0.1), 0.1)[-1] for k in range(20)]  # until one must wait
    assert [d.outcome for d in last].count(Outcome.REJECT) == 11 and last[-1].reason == "queue_full"
    (too_large,) = b.submit(b.new_request("huge", 10**7, 5, 0.2), 0.2)
    assert (too_large.outcome, too_large.reason) == (Outcome.REJECT, "too_large")
    observed = b.observe("m", 1.0)
    assert (observed.name, observed.size, observed.rejected) == ("m", 1, 11)
    assert b.observe("m", 20.0).rejected == 0  # out of the 10 s window


def test_a_request_whose_instance_moved_away_keeps_its_progress_and_counts():
    """A split or merge moves a worker to another macro instance: its requests finish on their old route, and
    their TTFT and TPOT still reach the SLO window."""
    b = book()
    r = b.new_request("r", 10, 5, 0.0)
    b.submit(r, 0.0)
    b.remove_instance("a", 0.1, requeue_pending=False)
    assert b.on_tokens(r, 1, 0.3) == [] and b.on_tokens(r, 4, 0.5) == []
    assert (r.generated, r.ttft(), r.tpot()) == (5, 0.3, 0.05)
    b.on_finish(r, 0.5, "ok")
    stats = b.window.stats(1.0)
    assert (stats.requests, stats.ttft_mean, stats.slo_attainment) == (1, 0.3, 1.0)
