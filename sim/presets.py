"""Named simulation set-ups; every field can be overridden from the command line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    model: str
    gpu: str
    tp: int
    instances: int
    intra_link: str
    inter_link: str
    dataset: str
    ttft: float
    tpot: float
    attainment: float
    strategies: tuple[str, ...]
    description: str


PRESETS: dict[str, Preset] = {
    # EcoServe's main set-up: 30B-class model, TP=4 on L20 (PCIe inside a node), one instance per node,
    # 8 instances (32 GPUs), 10 Gbit/s Ethernet between nodes, ShareGPT-like lengths, SLO 5 s / 100 ms at 90%.
    "paper-l20-30b": Preset(
        "llama-30b", "l20", 4, 8, "pcie4", "eth10", "sharegpt", 5.0, 0.1, 0.9,
        ("ecoserve", "vllm", "sarathi", "distserve", "mooncake"),
        "Llama-30B, TP=4 on L20, 8 instances, 10 GbE, ShareGPT, SLO 5 s / 100 ms @ 90%",
    ),
    # The same with CodeLlama-34B (GQA: an eighth of the KV per token), the model of EcoServe's dynamic run.
    "paper-l20-34b": Preset(
        "codellama-34b", "l20", 4, 8, "pcie4", "eth10", "sharegpt", 5.0, 0.1, 0.9,
        ("ecoserve", "vllm", "sarathi", "distserve", "mooncake"),
        "CodeLlama-34B, TP=4 on L20, 8 instances, 10 GbE, ShareGPT, SLO 5 s / 100 ms @ 90%",
    ),
    # A small set-up that simulates in seconds: for trying flags and for tests.
    "small-h100-7b": Preset(
        "llama-2-7b", "h100", 1, 2, "nvlink", "eth25", "sharegpt", 1.0, 0.05, 0.9,
        ("ecoserve", "vllm", "sarathi", "distserve"),
        "Llama-2-7B on H100, 2 instances, 25 GbE, ShareGPT, SLO 1 s / 50 ms @ 90%",
    ),
}  # fmt: skip
