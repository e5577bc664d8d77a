"""The scheduling brain: pure, clock-injected scheduling logic shared by every driver.

The router, the workers, the simulator and the unit tests call the same objects here, so a result from the
simulator speaks for the code that serves traffic. Nothing in this package does I/O, sleeps, reads a clock or
imports from the router, worker, operator or simulator packages: time (`now`) is always an argument.
"""
