"""The `ecoserve` command: one entry point with a subcommand per process or job.

It parses flags at the edge and calls into the brain and the components; it holds no policy of its own.
"""
