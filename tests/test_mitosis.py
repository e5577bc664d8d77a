"""The mitosis planner: grow, shrink, split, merge, bounds, hysteresis and cooldown."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoserve.brain.mitosis import (
    Action,
    MacroObservation,
    MitosisPlanner,
    MitosisSettings,
    Sizing,
    apply_to_sizes,
    sibling_name,
)
from ecoserve.brain.state import SLO

SLO5 = SLO(ttft=5.0, tpot=0.1, attainment=0.9)


def planner(**kw) -> MitosisPlanner:
    base = {"slo": SLO5, "min_instances": 6, "max_instances": 11, "cooldown": 60.0, "shrink_windows": 3}
    return MitosisPlanner(MitosisSettings(**(base | kw)))


def hot(name: str, size: int) -> MacroObservation:
    return MacroObservation(name, size, requests=100, ttft_mean=7.0, ttft_attainment=0.6, saved_tpot=0.5)


def cold(name: str, size: int) -> MacroObservation:
    return MacroObservation(name, size, requests=100, ttft_mean=0.5, ttft_attainment=1.0, saved_tpot=30.0)


def ok(name: str, size: int) -> MacroObservation:
    return MacroObservation(name, size, requests=100, ttft_mean=2.0, ttft_attainment=0.95, saved_tpot=5.5)


def surge(name: str, size: int, arrived: int = 400, serving: int | None = None) -> MacroObservation:
    """Overloaded: `arrived` requests came in while the serving instances finished 10 each; the router holds some."""
    serving = size if serving is None else serving
    return MacroObservation(name, size, 10 * serving, 9.0, 0.3, 0.1, 0, arrived, serving, queued=20)


def test_grow_when_mean_ttft_exceeds_the_slo_filling_the_fullest_partial_macro_instance():
    d = planner().plan([hot("g-1", 11), ok("g-2", 7), ok("g-3", 9)], now=0.0)
    assert (d.action, d.target) == (Action.GROW, "g-3")
    assert dict(d.figures)["ttft_mean"] == 7.0


def test_rejected_requests_are_a_grow_signal():
    obs = MacroObservation("g-1", 6, requests=0, rejected=3)
    assert planner().plan([obs], now=0.0).action is Action.GROW


def test_full_macro_instance_splits_in_halves_with_one_new_instance():
    d = planner().plan([hot("g-1", 11)], now=0.0)
    assert (d.action, d.target, d.move) == (Action.SPLIT, "g-1", 5)
    assert apply_to_sizes({"g-1": 11}, d, "g-2") == {"g-1": 6, "g-2": 6}


def test_shrink_needs_sustained_slack_then_takes_the_smallest_above_min():
    p = planner()
    group = [cold("g-1", 11), cold("g-2", 7)]
    assert [p.plan(group, now=t).action for t in (0, 1)] == [Action.NONE, Action.NONE]
    d = p.plan(group, now=2)
    assert (d.action, d.target) == (Action.SHRINK, "g-2")


def test_one_warm_window_resets_the_shrink_streak():
    p = planner()
    group = [cold("g-1", 8)]
    p.plan(group, 0)
    p.plan(group, 1)
    p.plan([ok("g-1", 8)], 2)
    assert p.plan(group, 3).action is Action.NONE


def test_saved_tpot_inside_the_band_is_not_a_shrink_signal():
    # band top for n=8: 5·9/8 = 5.625 s; 5.5 s of saved TPOT is inside it.
    p = planner(shrink_windows=1)
    assert p.plan([ok("g-1", 8)], 0).action is Action.NONE
    assert p.plan([cold("g-1", 8)], 1).action is Action.SHRINK


def test_shrink_at_min_merges_two_macro_instances_dropping_one():
    d = planner(shrink_windows=1).plan([cold("g-1", 6), cold("g-2", 6)], now=0.0)
    assert (d.action, d.target, d.source, d.remove) == (Action.MERGE, "g-2", "g-1", 1)
    assert apply_to_sizes({"g-1": 6, "g-2": 6}, d, "unused") == {"g-2": 11}


def test_single_macro_instance_at_min_stays():
    d = planner(shrink_windows=1).plan([cold("g-1", 6)], now=0.0)
    assert (d.action, d.reason) == (Action.NONE, "at_min_instances")


def test_idle_macro_instances_shrink():
    idle = MacroObservation("g-1", 9)
    assert planner(shrink_windows=1).plan([idle], now=0.0).action is Action.SHRINK


def test_small_macro_instances_merge_without_a_load_signal():
    p = MitosisPlanner(MitosisSettings(slo=SLO5, min_instances=1, max_instances=8))
    d = p.plan([ok("a", 3), ok("b", 4), ok("c", 8)], now=0.0)
    assert (d.action, d.source, d.target, d.remove) == (Action.MERGE, "a", "b", 0)


def test_cooldown_blocks_any_action():
    p = planner()
    d = p.plan([hot("g-1", 8)], now=100.0, last_change=50.0)
    assert (d.action, d.reason) == (Action.NONE, "cooldown")
    assert p.plan([hot("g-1", 8)], now=111.0, last_change=50.0).action is Action.GROW


def test_grow_hysteresis_needs_consecutive_windows():
    p = planner(grow_windows=2)
    assert p.plan([hot("g-1", 8)], 0).action is Action.NONE
    assert p.plan([hot("g-1", 8)], 1).action is Action.GROW


def test_group_cap_on_total_instances():
    d = planner(max_total_instances=16).plan([hot("a", 10), ok("b", 6)], now=0.0)
    assert (d.action, d.reason) == (Action.NONE, "at_max_total_instances")


def test_out_of_bounds_sizes_are_walked_back():
    assert planner().plan([ok("g-1", 4)], 0).action is Action.GROW
    assert planner().plan([ok("g-1", 13)], 0).action is Action.SHRINK


def test_settings_refuse_bounds_that_cannot_split():
    with pytest.raises(ValueError, match="2\\*minInstances"):
        MitosisSettings(slo=SLO5, min_instances=6, max_instances=10)
    with pytest.raises(ValueError, match="minInstances <= maxInstances"):
        MitosisSettings(slo=SLO5, min_instances=5, max_instances=4)


@settings(max_examples=200, deadline=None)
@given(
    bounds=st.integers(1, 6).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(2 * lo - 1, 2 * lo + 8))),
    rounds=st.lists(
        st.lists(st.sampled_from(["hot", "cold", "ok", "surge", "idle"]), min_size=1, max_size=6), max_size=25
    ),
)
def test_sizes_stay_within_bounds(bounds, rounds):
    lo, hi = bounds
    hi = max(hi, lo)
    p = MitosisPlanner(MitosisSettings(slo=SLO5, min_instances=lo, max_instances=hi, cooldown=0, shrink_windows=1))
    sizes = {"m0": lo}
    make = {"hot": hot, "cold": cold, "ok": ok, "surge": surge, "idle": lambda n, s: MacroObservation(n, s)}
    for t, kinds in enumerate(rounds):
        names = sorted(sizes)
        group = [make[kinds[k % len(kinds)]](name, sizes[name]) for k, name in enumerate(names)]
        d = p.plan(group, now=float(t))
        sizes = apply_to_sizes(sizes, d, f"m{t + 1}")
        assert all(lo <= n <= hi for n in sizes.values()), (d, sizes)


def test_observations_travel_as_json_between_router_and_autoscaler():
    sent = MacroObservation("ignored", 3, 40, 1.5, 0.95, 2.0, 2, 45, 3, 7)
    back = MacroObservation.from_json("demo", 5, sent.to_json())
    assert back == MacroObservation("demo", 5, 40, 1.5, 0.95, 2.0, 2, 45, 3, 7)
    assert MacroObservation.from_json("demo", 1, {}) == MacroObservation("demo", 1)
    with pytest.raises(ValueError, match="ttft_mean"):
        MacroObservation.from_json("demo", 1, {"ttft_mean": "slow"})


def test_sibling_names_derive_from_the_group():
    assert sibling_name("llama", {"llama"}) == "llama-2"
    assert sibling_name("llama", {"llama", "llama-2", "llama-4"}) == "llama-3"


def test_capacity_sizing_grows_by_what_the_arrivals_need():
    # 6 serving instances finished 60 requests while 120 arrived: 10 per instance per window, and 120 arrivals
    # need ceil(120 / (10 * 0.85)) = 15 instances; one grow adds at most max_grow_step of the 9 missing.
    d = planner(max_grow_step=4).plan([surge("g", 6, arrived=120)], now=0.0)
    assert (d.action, d.target, d.add) == (Action.GROW, "g", 4)
    assert dict(d.figures)["capacity"] == 10.0 and dict(d.figures)["needed"] == 15
    assert apply_to_sizes({"g": 6}, d, "unused") == {"g": 10}
    d = planner(max_grow_step=10).plan([surge("g", 6, arrived=70)], now=0.0)  # needs ceil(70 / 8.5) = 9
    assert d.add == 3


def test_the_papers_sizing_grows_one_at_a_time():
    d = planner(sizing=Sizing.ONE_AT_A_TIME).plan([surge("g", 6, arrived=120)], now=0.0)
    assert (d.action, d.add) == (Action.GROW, 1)


def test_a_grow_fills_only_the_room_left_below_max_instances():
    d = planner().plan([surge("g", 9, arrived=400)], now=0.0)
    assert (d.action, d.add) == (Action.GROW, 2)


def test_a_split_gives_the_sibling_new_instances_up_to_what_is_needed():
    d = planner(max_grow_step=8).plan([surge("g", 11, arrived=400)], now=0.0)
    assert (d.action, d.move, d.add) == (Action.SPLIT, 5, 6)  # the sibling: 5 moved + 6 new = N_u
    assert apply_to_sizes({"g": 11}, d, "g-2") == {"g": 6, "g-2": 11}


def test_instances_still_starting_count_toward_what_is_needed():
    # 10 wanted, 6 serving (4 loading their model): 70 arrivals need 9, so wait for the 4 rather than grow.
    d = planner().plan([surge("g", 10, arrived=70, serving=6)], now=0.0)
    assert (d.action, d.reason) == (Action.NONE, "starting_instances_suffice")
    # With nothing starting a TTFT miss still adds one instance, whatever the estimate says.
    d = planner().plan([surge("g", 9, arrived=70, serving=9)], now=0.0)
    assert (d.action, d.add) == (Action.GROW, 1)


def test_no_estimate_without_arrival_counts_or_an_overloaded_window():
    assert planner().plan([hot("g", 6)], now=0.0).add == 1  # a router that does not report arrivals
    steady = MacroObservation("g", 6, 100, 7.0, 0.6, 0.5, 0, 100, 6, 3)  # slow, but arrivals == completions
    p = planner()
    assert p.plan([steady], now=0.0).add == 1 and p.capacity is None
    # More arrived than finished, but nothing waits at the router: long requests still running, not overload.
    unqueued = MacroObservation("g", 6, 30, 7.0, 0.6, 0.5, 0, 60, 6, queued=0)
    assert p.plan([unqueued], now=1.0).add == 1 and p.capacity is None
    rejecting = replace(unqueued, rejected=4)  # turning requests away is overload
    assert p.plan([rejecting], now=2.0).add == 4 and p.capacity == 5.0


def test_shrink_waits_while_the_instances_left_could_not_carry_the_arrivals():
    p = planner(shrink_windows=1)
    p.plan([surge("g", 8, arrived=120)], now=0.0)  # learns 10 requests per instance per window
    relaxed = MacroObservation("g", 8, 60, 0.5, 1.0, 30.0, 0, 60, 8)  # 60 arrivals need ceil(60 / 8.5) = 8
    d = p.plan([relaxed], now=1.0)
    assert (d.action, d.reason) == (Action.NONE, "capacity_needed")
    quieter = MacroObservation("g", 8, 50, 0.5, 1.0, 30.0, 0, 50, 8)  # 50 need 6
    assert p.plan([quieter], now=2.0).action is Action.SHRINK
    assert planner(shrink_windows=1, sizing=Sizing.ONE_AT_A_TIME).plan([relaxed], now=0.0).action is Action.SHRINK


def test_healthy_windows_raise_the_learned_capacity():
    p = planner(shrink_windows=5)
    p.plan([surge("g", 8, arrived=120)], now=0.0)
    p.plan([MacroObservation("g", 8, 120, 1.0, 1.0, 3.0, 0, 120, 8)], now=1.0)  # 15 per instance, on target
    assert p.capacity == 15.0


def test_settings_refuse_a_grow_step_below_one():
    with pytest.raises(ValueError, match="maxGrowStep"):
        MitosisSettings(slo=SLO5, min_instances=1, max_instances=4, max_grow_step=0)


def test_nothing_decoding_at_a_healthy_moment_is_slack_unless_requests_wait():
    # Light load: requests finished on time, and none is decoding when the planner looks.
    between = MacroObservation("g", 8, 20, 0.3, 1.0, None, 0, 20, 8, queued=0)
    assert planner(shrink_windows=1).plan([between], now=0.0).action is Action.SHRINK
    waiting = replace(between, queued=2)
    assert planner(shrink_windows=1).plan([waiting], now=0.0).action is Action.NONE
