"""The paramio benchmark harness: paramio against the stock tools, each operation in its own process.

Run it with ``make bench`` (or ``python -m benchmarks --help``); it is not part of the test suite.
"""
