"""The macro-instance router and the group gateway (HTTP, asyncio): drivers of the brain's MacroScheduler.

May import ecoserve.brain; nothing in the brain imports this package.
"""
