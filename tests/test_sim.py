"""The simulator: each strategy's rules on small hand-computed cases, the goodput search, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecoserve.bench.workload import WorkloadRequest
from ecoserve.brain.hardware import gpu_preset, interconnect_preset, model_preset
from ecoserve.brain.state import SLO
from ecoserve.brain.steptime import decode_time, prefill_time
from ecoserve.cli.main import main
from ecoserve.sim.disagg import DisaggregatedCluster
from ecoserve.sim.goodput import search_goodput
from ecoserve.sim.results import RunSummary, summarize
from ecoserve.sim.setup import Deployment
from ecoserve.sim.strategies import make_cluster, parse_strategy

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"


def deployment(instances: int = 2, **kw) -> Deployment:
    base = {
        "model": model_preset("llama-2-7b"),
        "gpu": gpu_preset("h100"),
        "tp": 1,
        "pp": 1,
        "instances": instances,
        "intra_link": interconnect_preset("nvlink"),
        "inter_link": interconnect_preset("eth10"),
        "slo": SLO(1.0, 0.05),
        "kv_blocks": 4000,
    }
    return Deployment(**(base | kw))


@pytest.mark.parametrize("strategy", ["ecoserve", "vllm", "vllm-mixed", "sarathi"])
def test_a_lone_request_sees_its_prefill_time_as_ttft_and_one_decode_step_per_token(strategy):
    d = deployment()
    (record,) = make_cluster(strategy, d).run([WorkloadRequest(0.0, 300, 4)])
    assert record.ttft == pytest.approx(prefill_time(d.cost, [300]))
    # Each later token is one decode step of a batch of one over its growing context.
    steps = [decode_time(d.cost, 1, 301 + k) for k in range(3)]
    assert record.finish - record.first_token == pytest.approx(sum(steps))
    assert record.tokens == 4


def test_distserve_ttft_includes_the_kv_transfer_at_link_speed():
    d = deployment()
    cluster = DisaggregatedCluster(d, 1)
    (record,) = cluster.run([WorkloadRequest(0.0, 300, 4)])
    transfer = d.inter_link.latency + 300 * d.model.kv_bytes_per_token / d.inter_link.bandwidth
    assert transfer > 0.1  # 300 tokens of Llama-2-7B KV (~157 MB) over 10 Gbit/s
    assert record.ttft == pytest.approx(prefill_time(d.cost, [300]) + transfer)
    assert record.tokens == 4 and record.finish is not None


def test_kv_transfers_queue_on_a_shared_link():
    d = deployment()
    cluster = DisaggregatedCluster(d, 1)
    a, b = cluster.run([WorkloadRequest(0.0, 300, 2), WorkloadRequest(0.0, 300, 2)])
    transfer = cluster.transfer_time(300)
    # The first arrival starts a prefill step at once; the second prefills next, well before the first's KV
    # has crossed the link, so its transfer waits for the link: it lands one transfer time later.
    prefill = prefill_time(d.cost, [300])
    assert transfer > 2 * prefill
    assert sorted([a.ttft, b.ttft]) == pytest.approx([prefill + transfer, prefill + 2 * transfer])


def test_vllm_v0_pauses_decodes_for_a_prefill_but_mixed_batching_does_not():
    d = deployment(instances=1)
    work = [WorkloadRequest(0.0, 100, 40), WorkloadRequest(0.05, 4000, 2)]
    v0 = make_cluster("vllm", d).run(work)[0]
    mixed = make_cluster("vllm-mixed", d).run(work)[0]
    # The first request's TPOT suffers more when the long prompt runs alone and its decodes wait.
    assert v0.tpot > mixed.tpot


def test_ecoserve_rolls_to_an_idle_instance_when_the_active_one_lacks_slack():
    # A TPOT SLO equal to the decode step time: decodes bank no slack, so no prefill may pause them.
    d = deployment()
    d = deployment(slo=SLO(1.0, decode_time(d.cost, 1, 150)))
    cluster = make_cluster("ecoserve", d)
    cluster.run([WorkloadRequest(0.0, 100, 50), WorkloadRequest(0.1, 100, 50)])
    counts = sorted(inst.steps for inst in cluster.instances.values())
    assert counts[0] > 0  # both instances ran steps: the second request went to the other one


def test_summary_counts_rejections_as_misses():
    d = deployment()
    records = make_cluster("vllm", d).run([WorkloadRequest(0.0, 10, 2), WorkloadRequest(0.0, 100_000, 2)])
    s = summarize(records, d.slo, 1.0)
    assert (s.requests, s.rejected, s.attainment) == (2, 1, 0.5)


def fake(limit: float):
    def evaluate(rate: float) -> RunSummary:
        ok = 1.0 if rate <= limit else 0.5
        return RunSummary(rate, 10, ok, ok, ok, 0, None, None, None)

    return evaluate


@pytest.mark.parametrize("limit", [0.3, 7.3, 40.0])
def test_goodput_search_brackets_then_bisects(limit):
    found = search_goodput(fake(limit), 0.9, start=1.0, precision=0.02)
    assert limit * 0.97 <= found.goodput <= limit
    assert all(e.rate > 0 for e in found.evaluations)


def test_goodput_is_zero_when_nothing_passes():
    assert search_goodput(fake(-1.0), 0.9, floor=0.01).goodput == 0.0


def test_strategy_names():
    for ok in ("ecoserve", "ecoserve-max", "ecoserve-mean-prompt", "ecoserve-prompt", "vllm", "mooncake"):
        assert parse_strategy(ok) == ok
    for bad in ("nope", "ecoserve-median", "ecoserve-max-prompt-x"):
        with pytest.raises(ValueError):
            parse_strategy(bad)


def test_cli_goodput_study_writes_table_json_and_png(tmp_path, capsys):
    out, png = tmp_path / "sim.json", tmp_path / "sim.png"
    args = ["simulate", "--preset", "small-h100-7b", "--strategies", "ecoserve,vllm,distserve,mooncake"]
    assert main([*args, "--num-requests", "150", "--json", str(out), "--png", str(png)]) == 0
    table = capsys.readouterr().out
    assert "goodput req/s" in table and "vs vllm" in table
    result = json.loads(out.read_text())
    assert set(result["goodput"]) == {"ecoserve", "vllm", "distserve", "mooncake"}
    assert all(v > 0 for v in result["goodput"].values())
    assert result["strategies"]["mooncake"]["prefill_instances"] == 1  # two instances: one split only
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_single_run_on_the_trace_reports_speed(tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["simulate", "--preset", "small-h100-7b", "--strategies", "ecoserve", "--trace", str(TRACE)]
    assert main([*args, "--arrival", "trace", "--duration", "20", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"]["ecoserve"]
    assert run["requests"] > 20 and run["events_per_s"] > 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--strategies", "nope"], "--strategies"),
        (["--attainment", "0.9", "--percentile", "90"], "--percentile"),
        (["--trace", "/nonexistent.csv"], "--trace"),
        (["--ramp", "5,10", "--sizing", "bigger"], "--sizing"),
    ],
)
def test_cli_bad_flags_are_named(flags, named, capsys):
    assert main(["simulate", "--preset", "small-h100-7b", *flags]) == 2
    assert named in capsys.readouterr().err


def test_ramp_workload_follows_the_steps():
    from ecoserve.sim.dynamic import ramp_workload

    lengths = [WorkloadRequest(0.0, 10, 5)]
    work = ramp_workload([10.0, 40.0], 50.0, lengths, seed=1)
    first = sum(1 for w in work if w.arrival < 50)
    second = len(work) - first
    assert 350 <= first <= 650 and 1700 <= second <= 2300
    assert all(w.prompt_tokens == 10 for w in work)


def test_dynamic_ramp_grows_splits_shrinks_and_merges_without_losing_a_request(tmp_path, capsys):
    out = tmp_path / "ramp.json"
    args = ["simulate", "--preset", "small-h100-7b", "--instances", "1", "--ramp", "10,60,60,5,5,5,5,5"]
    args += ["--step-seconds", "20", "--window", "10", "--min-instances", "1", "--max-instances", "2"]
    args += ["--max-total-instances", "4", "--startup-delay", "2", "--cooldown", "4", "--planner-interval", "4"]
    assert main([*args, "--sizing", "one-at-a-time", "--json", str(out), "--png", str(tmp_path / "ramp.png")]) == 0
    (report,) = json.loads(out.read_text())["runs"]
    assert report["sizing"] == "one-at-a-time"
    actions = [s["action"] for s in report["scaling"]]
    assert {"grow", "split", "shrink", "merge"} <= set(actions)
    assert report["failed"] == 0 and report["requests"] > 2000
    for window in report["windows"]:
        assert 1 <= window["instances"] <= 4
    assert (tmp_path / "ramp.png").stat().st_size > 0
    assert "1 splits, 1 merges" in capsys.readouterr().out


def test_ramp_compares_the_planners_sizings_side_by_side(tmp_path, capsys):
    out = tmp_path / "ramp.json"
    args = ["simulate", "--preset", "small-h100-7b", "--instances", "1", "--ramp", "5,40,40", "--step-seconds", "20"]
    args += ["--window", "10", "--min-instances", "1", "--max-instances", "8", "--max-total-instances", "8"]
    args += ["--startup-delay", "2", "--cooldown", "4", "--planner-interval", "4"]
    assert main([*args, "--sizing", "capacity,one-at-a-time", "--json", str(out)]) == 0
    runs = {run["sizing"]: run for run in json.loads(out.read_text())["runs"]}
    grows = {name: [s["add"] for s in run["scaling"] if s["action"] == "grow"] for name, run in runs.items()}
    assert max(grows["capacity"]) >= 2 and set(grows["one-at-a-time"]) == {1}
    assert runs["capacity"]["requests"] == runs["one-at-a-time"]["requests"] > 1000
    table = capsys.readouterr().out.split("instance-s  steps")[-1]
    for name, run in runs.items():
        assert f"{run['attainment']:.1%}" in next(line for line in table.splitlines() if line.startswith(name))
