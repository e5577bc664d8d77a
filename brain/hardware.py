"""What the cost model needs to know about a model and the machines it runs on, with presets.

Numbers are public datasheet figures, not measurements: the cost model's calibrated efficiency factors
(brain.costmodel) turn them into achieved rates, so a GPU that is not in the presets needs only its
datasheet to be modelled. Memory sizes are what the driver reports as total (nvidia-smi MiB), because that
is what vLLM's `gpu_memory_utilization` multiplies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

MIB = 2**20

T = TypeVar("T")


class UnknownPresetError(KeyError, ValueError):
    """A preset name that is not in the table; a KeyError for lookups, a ValueError for argument parsing."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A decoder-only transformer of the LLaMA family (RMSNorm, rotary embedding, optional gated MLP, GQA)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{self.name}: hidden_size {self.hidden_size} is not a multiple of {self.num_heads} heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: {self.num_heads} heads do not group into {self.num_kv_heads} KV heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_size(self) -> int:
        """Width of one of K or V for one token across all KV heads."""
        return self.num_kv_heads * self.head_dim

    def kv_heads_per_shard(self, tp: int) -> int:
        """KV heads on one of `tp` tensor-parallel GPUs (vLLM replicates them when `tp` exceeds them)."""
        return max(1, self.num_kv_heads // tp)

    @property
    def mlp_up_width(self) -> int:
        """Output width of the MLP's first projection: gate and up fused when the MLP is gated."""
        return (2 if self.gated_mlp else 1) * self.intermediate_size

    @property
    def layer_params(self) -> int:
        """Parameters of one transformer layer: QKV, output projection, MLP and the two norms."""
        h = self.hidden_size
        attention = h * (h + 2 * self.kv_size) + h * h
        mlp = h * self.mlp_up_width + self.intermediate_size * h
        return attention + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        """Input embedding plus LM head (one matrix when tied) plus the final norm."""
        tables = 1 if self.tie_word_embeddings else 2
        return tables * self.vocab_size * self.hidden_size + self.hidden_size

    @property
    def param_count(self) -> int:
        return self.num_layers * self.layer_params + self.embedding_params

    @property
    def weight_bytes(self) -> int:
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in every layer: what one token of context costs in the KV cache."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelShape:
        """Read a LLaMA-style Hugging Face `config.json` (LLaMA, Mistral, Qwen2, CodeLlama, ...).

        Serving runs in 16-bit precision whatever `torch_dtype` says (vLLM casts float32 checkpoints down),
        so `dtype_bytes` keeps its default.
        """
        required = (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        missing = [key for key in required if key not in config]
        if missing:
            raise ValueError(f"Hugging Face config lacks {', '.join(missing)} (a LLaMA-style config.json has them)")
        heads = int(config["num_attention_heads"])
        return cls(
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_hf_config_file(cls, path: Path) -> ModelShape:
        """Load `config.json` (or the model directory holding it); the model is named after its directory."""
        file = path / "config.json" if path.is_dir() else path
        return cls.from_hf_config(json.loads(file.read_text()), name=file.parent.name or None)


@dataclass(frozen=True, slots=True)
class GPU:
    """One accelerator: dense 16-bit tensor throughput, HBM bandwidth, memory the driver reports."""

    name: str
    peak_flops: float
    mem_bandwidth: float
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Interconnect:
    """A link between GPUs: bandwidth per direction (bytes/s) and the fixed latency of one collective."""

    name: str
    bandwidth: float
    latency: float


# Shapes from each model's Hugging Face config.json.
MODELS: Mapping[str, ModelShape] = MappingProxyType(
    {
        "llama-2-7b": ModelShape("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
        "llama-2-13b": ModelShape("llama-2-13b", 40, 5120, 40, 40, 13824, 32000),
        "llama-2-70b": ModelShape("llama-2-70b", 80, 8192, 64, 8, 28672, 32000),
        # LLaMA-1 "30B" (33B parameters), the 30B-class model of the EcoServe paper.
        "llama-30b": ModelShape("llama-30b", 60, 6656, 52, 52, 17920, 32000),
        "codellama-34b": ModelShape("codellama-34b", 48, 8192, 64, 8, 22016, 32000),
        "llama-3-8b": ModelShape("llama-3-8b", 32, 4096, 32, 8, 14336, 128256),
        "llama-3-70b": ModelShape("llama-3-70b", 80, 8192, 64, 8, 28672, 128256),
        "qwen2-72b": ModelShape("qwen2-72b", 80, 8192, 64, 8, 29568, 152064),
    }
)

# Dense (no sparsity) BF16 tensor-core FLOP/s and HBM/GDDR bandwidth from NVIDIA's datasheets:
# H100 SXM5 80GB: 989.4 TFLOP/s, 3.35 TB/s (nvidia-smi: 81559 MiB).
# H200 SXM 141GB: 989.4 TFLOP/s, 4.8 TB/s (143771 MiB).
# A100 SXM4 80GB: 312 TFLOP/s, 2,039 GB/s (81920 MiB); A800 is the A100 with NVLink cut to 400 GB/s.
# L20 48GB (Ada, 92 SMs): 119.5 TFLOP/s, 864 GB/s GDDR6 (46068 MiB with ECC on).
# L40S 48GB: 362 TFLOP/s, 864 GB/s (46068 MiB).
GPUS: Mapping[str, GPU] = MappingProxyType(
    {
        "h100": GPU("h100", 989.4e12, 3.35e12, 81559 * MIB),
        "h200": GPU("h200", 989.4e12, 4.8e12, 143771 * MIB),
        "a100": GPU("a100", 312e12, 2.039e12, 81920 * MIB),
        "a800": GPU("a800", 312e12, 2.039e12, 81920 * MIB),
        "l20": GPU("l20", 119.5e12, 864e9, 46068 * MIB),
        "l40s": GPU("l40s", 362e12, 864e9, 46068 * MIB),
    }
)

# Bandwidth per direction. Latency is the fixed cost of one small collective or transfer: a few µs for
# NVLink and RDMA (NCCL's LL protocol, vLLM's custom all-reduce), tens of µs through a TCP stack.
INTERCONNECTS: Mapping[str, Interconnect] = MappingProxyType(
    {
        "nvlink": Interconnect("nvlink", 450e9, 5e-6),  # NVLink 4 (H100/H200): 18 links x 25 GB/s
        "nvlink3": Interconnect("nvlink3", 300e9, 5e-6),  # NVLink 3 (A100): 12 links x 25 GB/s
        "pcie4": Interconnect("pcie4", 31.5e9, 10e-6),  # PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b
        "pcie5": Interconnect("pcie5", 63e9, 10e-6),  # PCIe 5.0 x16
        "eth10": Interconnect("eth10", 10e9 / 8, 50e-6),
        "eth25": Interconnect("eth25", 25e9 / 8, 50e-6),
        "eth100": Interconnect("eth100", 100e9 / 8, 50e-6),
        "ib400": Interconnect("ib400", 400e9 / 8, 5e-6),  # InfiniBand NDR 400 Gb/s
    }
)


def _lookup(table: Mapping[str, T], kind: str, name: str) -> T:
    try:
        return table[name.lower()]
    except KeyError:
        raise UnknownPresetError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def model_preset(name: str) -> ModelShape:
    return _lookup(MODELS, "model", name)


def gpu_preset(name: str) -> GPU:
    return _lookup(GPUS, "GPU", name)


def interconnect_preset(name: str) -> Interconnect:
    return _lookup(INTERCONNECTS, "interconnect", name)
