"""Reproduction of the paper's tables: sweep files -> Optuna studies of cached runs -> tables, figures, report."""
