"""Shared test fixtures. Tests run on CPU with small networks and synthetic data they make themselves."""
import os

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("MPLBACKEND", "Agg")
