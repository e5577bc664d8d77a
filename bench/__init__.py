"""Load generation and measurement against any OpenAI-compatible endpoint (`ecoserve bench`).

Client side only: it may import ecoserve.brain for shared data types, and nothing serving-side imports it.
"""
