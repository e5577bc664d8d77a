"""One serving instance per pod: the simulated vLLM-compatible engine and the vLLM engine with the
project's temporal (prefill-only / decode-only) scheduler.

May import ecoserve.brain; nothing in the brain imports this package.
"""
