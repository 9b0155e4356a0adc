"""Simulators that stand in for real machines in the demo and the tests.

Each one is played by a seeded scenario (`scenario.py`), serves the same register description as the
collector reads (`config/workshop.yaml`), and writes what really happened as JSON lines (`groundtruth.py`),
so that a test can compare what Copeau stored with the truth, number for number.
"""
