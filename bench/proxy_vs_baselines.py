"""The proxy (offline local search by default) against random, magnitude, LAMP, Taylor and Diff-Pruning
at the same budget: loss after pruning and after a short fine-tune, rounds, wall time, replay wall time.

    python bench/proxy_vs_baselines.py [same options as bench/prune_methods.py]

Writes bench/results/proxy_vs_baselines.json and .md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prune_methods  # noqa: E402

if __name__ == "__main__":
    defaults = ["--methods", "proxy,random,magnitude,lamp,taylor,diff", "--name", "proxy_vs_baselines"]
    sys.argv = [sys.argv[0], *defaults, *sys.argv[1:]]
    prune_methods.main()
