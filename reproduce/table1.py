"""Reproduce the paper's Table 1 (20%-pruned student): `python -m reproduce.table1 [--scale ...]`."""
import sys

from reproduce.run import main

if __name__ == "__main__":
    sys.exit(main("table1"))
