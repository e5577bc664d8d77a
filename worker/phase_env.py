"""Environment variables through which `ecoserve worker --engine vllm` configures the scheduler that vLLM
instantiates in its engine process (vLLM passes no arguments of ours to a custom scheduler class)."""

PHASE_MODE_ENV = "ECOSERVE_PHASE_MODE"  # prefill-priority (behind a router) or tdpipe (standalone)
GPU_ENV = "ECOSERVE_GPU"  # GPU preset that prices TD-Pipe's step-time comparisons
