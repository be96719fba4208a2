"""Sweeps on Optuna: spec (sweep files checked), study (the workers and their trials), results, subprocess."""
