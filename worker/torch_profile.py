"""Measure prefill and decode step times of a model shape with PyTorch: random weights, no download.

One tensor-parallel shard of a LLaMA-style decoder layer (RMSNorm, QKV projection, rotary embedding,
scaled-dot-product attention with GQA, output projection, gated SiLU MLP, residual adds) is built from a
ModelShape and timed; a step is `num_layers` such layers plus the LM head for one token per sequence (the
all-reduces of tensor parallelism are not measured: they need several GPUs). Prefill is one prompt of each
length with causal attention; decode is a batch of single tokens attending to a KV cache of a given length.
On a CPU the numbers mean nothing; the code path is the same one that runs on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ecoserve.brain.hardware import ModelShape

from .step_table import StepRow, median_seconds


class LayerShard:
    """Random weights of one decoder layer's tensor-parallel shard, on a device."""

    def __init__(self, shape: ModelShape, tp: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.heads = max(shape.num_heads // tp, 1)
        self.kv_heads = shape.kv_heads_per_shard(tp)
        self.head_dim = shape.head_dim
        h, inter = shape.hidden_size, max(shape.intermediate_size // tp, 1)
        up = 2 * inter if shape.gated_mlp else inter
        self.gated = shape.gated_mlp

        def weight(rows: int, cols: int) -> torch.Tensor:
            return (torch.randn(rows, cols, generator=gen) / rows**0.5).to(device=device, dtype=dtype)

        self.w_qkv = weight(h, (self.heads + 2 * self.kv_heads) * self.head_dim)
        self.w_o = weight(self.heads * self.head_dim, h)
        self.w_up = weight(h, up)
        self.w_down = weight(inter, h)
        self.norm = torch.ones(h, device=device, dtype=dtype)
        self.lm_head = weight(h, max(shape.vocab_size // tp, 1))

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        freq = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
        angles = positions[:, None].float() * freq[None, :]
        cos, sin = angles.cos().to(x.dtype)[:, None, :], angles.sin().to(x.dtype)[:, None, :]
        x1, x2 = x[..., :half], x[..., half : 2 * half]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half :]], dim=-1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        up = F.rms_norm(x, (x.shape[-1],), self.norm) @ self.w_up
        if self.gated:
            gate, up = up.chunk(2, dim=-1)
            up = F.silu(gate) * up
        else:
            up = F.silu(up)
        return x + up @ self.w_down

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = F.rms_norm(x, (x.shape[-1],), self.norm) @ self.w_qkv
        d = self.head_dim
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = self._rotary(q.view(-1, self.heads, d), positions)
        k = self._rotary(k.view(-1, self.kv_heads, d), positions)
        return q, k, v.view(-1, self.kv_heads, d)

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """One prompt of len(x) tokens, causal attention."""
        positions = torch.arange(x.shape[0], device=x.device)
        q, k, v = self._qkv(x, positions)
        attn = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
        )
        x = x + attn.transpose(0, 1).reshape(x.shape[0], -1) @ self.w_o
        return self._mlp(x)

    def decode(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """One new token per sequence (len(x) sequences) over a KV cache of shape (batch, kv_heads, C, d)."""
        positions = torch.full((x.shape[0],), k_cache.shape[2], device=x.device)
        q, _, _ = self._qkv(x, positions)
        attn = F.scaled_dot_product_attention(q[:, :, None, :], k_cache, v_cache, enable_gqa=True)
        x = x + attn.reshape(x.shape[0], -1) @ self.w_o
        return self._mlp(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.norm) @ self.lm_head


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    return median_seconds(fn, repeats, torch.cuda.synchronize if device.type == "cuda" else (lambda: None))


@torch.inference_mode()
def profile(
    shape: ModelShape,
    prompt_lens: Sequence[int],
    batch_sizes: Sequence[int],
    context: int,
    tp: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    repeats: int = 5,
    progress: Callable[[StepRow], None] | None = None,
) -> list[StepRow]:
    """Step times for prompts of `prompt_lens` and decode batches of `batch_sizes` over `context` tokens."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        dtype, torch.bfloat16 if dev.type == "cuda" else torch.float32
    )
    layer = LayerShard(shape, tp, dev, dt)
    h = shape.hidden_size
    rows: list[StepRow] = []

    def record(row: StepRow) -> None:
        rows.append(row)
        if progress is not None:
            progress(row)

    for n in prompt_lens:
        x = torch.randn(n, h, device=dev, dtype=dt)
        per_layer = _timed(lambda x=x: layer.prefill(x), dev, repeats)
        head = _timed(lambda x=x: layer.head(x[-1:]), dev, repeats)
        record(StepRow("prefill", n, n, per_layer * shape.num_layers + head))
    for b in batch_sizes:
        x = torch.randn(b, h, device=dev, dtype=dt)
        k = torch.randn(b, layer.kv_heads, context, layer.head_dim, device=dev, dtype=dt)
        v = torch.randn_like(k)
        per_layer = _timed(lambda x=x, k=k, v=v: layer.decode(x, k, v), dev, repeats)
        head = _timed(lambda x=x: layer.head(x), dev, repeats)
        record(StepRow("decode", b, context, per_layer * shape.num_layers + head))
    return rows
