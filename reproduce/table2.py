"""Reproduce the paper's Table 2 (smaller same-family student): `python -m reproduce.table2 [--scale ...]`."""
import sys

from reproduce.run import main

if __name__ == "__main__":
    sys.exit(main("table2"))
