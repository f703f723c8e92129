"""Benchmarks import their helpers from bench/common.py; `pytest bench --benchmark-only` runs all."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
