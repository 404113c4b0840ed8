"""python -m gru_native: the seed notebook on gru_native.GRU, parity with torch.nn.GRU and a speed
comparison. Exits non-zero if any check fails."""

import argparse
import sys

from .seed import main

parser = argparse.ArgumentParser(prog="python -m gru_native", description=__doc__)
parser.add_argument("--repeats", type=int, default=200, help="timing rounds (default 200)")
sys.exit(main(parser.parse_args().repeats))
