"""Reliability and security suite of REaaS: soundness under attack, fuzzing, load, faults, security.

``python -m reliability`` (``make reliability``) runs every part and writes ``results/reliability.json``.
"""
