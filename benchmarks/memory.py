"""Peak memory of training steps: gru_native vs torch.nn.GRU, each in a fresh subprocess.

    python benchmarks/memory.py                      # medium-2L-bi, 3 training steps
    python benchmarks/memory.py --shape 50,64,512,1024,1,uni --steps 2

Reports the process's peak resident set size (ru_maxrss) after building the model and input
("baseline") and after the training steps ("peak"); "training" = peak - baseline is what the
forward + backward themselves needed at most.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import torch
import gru_native
T, N, C, H, L, bi, steps, impl = json.loads(sys.argv[1])
torch.manual_seed(0)
cls = torch.nn.GRU if impl == "nn.GRU" else gru_native.GRU
m = cls(C, H, L, bidirectional=bi)
x = torch.randn(T, N, C, requires_grad=True)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(steps):
    out, h = m(x)
    (out.sum() + h.sum()).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kb": baseline, "peak_kb": peak}))
"""


def measure(shape, steps, impl):
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(shape) + [steps, impl])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="100,32,256,256,2,bi", help="T,N,C,H,layers,uni|bi")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    parts = args.shape.split(",")
    shape = [int(p) for p in parts[:5]] + [parts[5] == "bi"]
    print(f"# peak RSS of {args.steps} training steps, shape (T,N,C,H,L,dir) = {args.shape}, "
          "each implementation in a fresh process")
    results = {}
    for impl in ("nn.GRU", "gru_native"):
        r = measure(shape, args.steps, impl)
        r["training_kb"] = r["peak_kb"] - r["baseline_kb"]
        results[impl] = r
        print(f"{impl:<11} baseline {r['baseline_kb'] / 1024:8.1f} MiB   peak "
              f"{r['peak_kb'] / 1024:8.1f} MiB   training {r['training_kb'] / 1024:8.1f} MiB")
    ratio = results["gru_native"]["training_kb"] / max(1, results["nn.GRU"]["training_kb"])
    print(f"gru_native training memory / nn.GRU's: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
