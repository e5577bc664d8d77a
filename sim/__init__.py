"""The discrete-event simulator: whole clusters on a virtual clock, for sizing and for comparing strategies.

`ecoserve` runs the real brain (MacroBook, MacroScheduler, EngineModel with the temporal policy); the
baselines (vLLM-style mixed batching, Sarathi's chunked prefill, DistServe/MoonCake-style disaggregation with
KV transfer over a modelled link) run on the same engine and cost model. Nothing imports this package.
"""
