"""The torch profiler backend on a CPU with a tiny model: the code path is real, the numbers are not."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm  # torch comes with the vllm extra

pytest.importorskip("torch", reason="the vllm extra is not installed: pip install -e '.[vllm,dev]'")

from ecoserve.brain.costmodel import load_prefill_table  # noqa: E402
from ecoserve.brain.hardware import ModelShape, model_preset  # noqa: E402
from ecoserve.cli.main import main  # noqa: E402
from ecoserve.worker.torch_profile import profile  # noqa: E402

TINY = ModelShape(
    "tiny", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=500
)


def test_profile_times_every_requested_shape():
    rows = profile(TINY, [16, 64], [1, 4], context=32, device="cpu", repeats=2)
    assert [(r.kind, r.tokens, r.context) for r in rows] == [
        ("prefill", 16, 16),
        ("prefill", 64, 64),
        ("decode", 1, 32),
        ("decode", 4, 32),
    ]
    assert all(r.seconds > 0 for r in rows)


def test_cli_writes_tables_the_cost_model_reads(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(
        '{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, '
        '"intermediate_size": 128, "vocab_size": 500}'
    )
    out = tmp_path / "tiny"
    args = ["profile", "measure", "--hf-config", str(config), "--device", "cpu", "--repeats", "2"]
    assert main([*args, "--prompt-lens", "16,1024", "--batch-sizes", "1,2", "--gpu", "h100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prefill" in printed and "decode" in printed and "%" in printed
    table = load_prefill_table(tmp_path / "tiny.prefill.csv", fallback=None)
    assert table.prefill_seconds(100) > 0
    assert (tmp_path / "tiny.decode.csv").read_text().startswith("batch_size,context,decode_time_s")


def test_tensor_parallel_shard_is_smaller():
    import torch

    from ecoserve.worker.torch_profile import LayerShard

    full = LayerShard(model_preset("llama-2-7b"), 1, torch.device("meta"), torch.float32)
    quarter = LayerShard(model_preset("llama-2-7b"), 4, torch.device("meta"), torch.float32)
    assert quarter.w_up.shape[1] * 4 == full.w_up.shape[1] and quarter.heads * 4 == full.heads
