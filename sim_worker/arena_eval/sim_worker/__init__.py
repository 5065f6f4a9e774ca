"""Sim workers: environment adapters, the rollout loop and the PolicyClient.

A sim node needs no torch: everything here talks to the model pool through
``arena_eval.broker`` only.
"""
