"""The OpenAI-compatible HTTP protocol spoken by the simulated worker, the router and the gateway.

Request bodies are parsed once here into typed models; responses, stream chunks and error bodies are built
here, so every server answers in the same shape. May import ecoserve.brain; imports no component.
"""
