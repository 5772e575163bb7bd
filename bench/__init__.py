"""Benchmarks: jaxhp against the alternatives on the same work, in one run.

Run ``python -m bench`` (or ``python bench/run.py``); see ``bench/run.py``.
"""
