"""focalbench performance benchmarks (``make bench``): ``python benchmarks/run.py`` writes ``results/bench/``."""
