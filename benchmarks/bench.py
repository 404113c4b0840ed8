"""gru_native beside torch.nn.GRU (and other peers), in one process.

For every shape and mode, the implementations run interleaved (one call of each per round) after
a warm-up, with the same weights and inputs; the table shows medians and speedup = peer's median /
gru_native's median.

    python benchmarks/bench.py                        # canonical CPU shapes
    python benchmarks/bench.py --shapes seed,small --modes inference
    python benchmarks/bench.py --json results.json    # also write the numbers

Shapes are (T, N, C, H, layers, direction).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import gru_native


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    N: int
    C: int
    H: int
    layers: int
    bidirectional: bool

    def describe(self) -> str:
        return (f"{self.T},{self.N},{self.C},{self.H},{self.layers},"
                f"{'bi' if self.bidirectional else 'uni'}")


CANONICAL = [
    Shape("seed", 9, 3, 5, 5, 1, False),
    Shape("seed-2L-bi", 9, 3, 5, 5, 2, True),
    Shape("small", 100, 32, 64, 64, 1, False),
    Shape("medium-2L-bi", 100, 32, 256, 256, 2, True),
    Shape("large", 50, 64, 512, 1024, 1, False),
    Shape("latency-B1", 200, 1, 256, 256, 1, False),
]
MODES = ("inference", "training")


@dataclass
class Case:
    """One (shape, mode): a callable per implementation, all computing the same thing."""
    shape: Shape
    mode: str
    fns: Dict[str, Callable[[], None]] = field(default_factory=dict)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_case(shape: Shape, mode: str, device: str, dtype: torch.dtype) -> Case:
    torch.manual_seed(0)
    ref = nn.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                 device=device, dtype=dtype)
    ours = gru_native.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                          device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape.T, shape.N, shape.C, device=device, dtype=dtype)
    case = Case(shape, mode)
    for name, m in (("nn.GRU", ref), ("gru_native", ours)):
        if mode == "inference":
            def fn(m=m):
                with torch.no_grad():
                    m(x)
        else:
            xg = x.clone().requires_grad_()

            def fn(m=m, xg=xg):
                out, h = m(xg)
                (out.sum() + h.sum()).backward()
        case.fns[name] = fn
    return case


def measure(case: Case, device: str, budget_s: float, min_rounds: int,
            max_rounds: int) -> Dict[str, dict]:
    """Interleaved medians. Rounds: as many as fit the time budget, within [min, max]."""
    names = list(case.fns)
    first = {}
    for name in names:  # warm-up (first call allocates, fills caches)
        for i in range(2):
            _sync(device)
            start = time.perf_counter()
            case.fns[name]()
            _sync(device)
            first[name] = time.perf_counter() - start
    per_round = sum(first.values())
    rounds = int(max(min_rounds, min(max_rounds, budget_s / max(per_round, 1e-9))))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            _sync(device)
            start = time.perf_counter()
            case.fns[name]()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {n: {"median_s": statistics.median(s), "rounds": len(s),
                "min_s": min(s)} for n, s in samples.items()}


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(s.name for s in CANONICAL),
                        help="comma-separated shape names (default: all canonical)")
    parser.add_argument("--modes", default=",".join(MODES), help="inference,training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timing per shape and mode (default 3)")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=500)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    by_name = {s.name: s for s in CANONICAL}
    unknown = [n for n in args.shapes.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {list(by_name)}")
    shapes = [by_name[n] for n in args.shapes.split(",")]
    modes = args.modes.split(",")
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    machine = machine_description(args.device)
    print(f"# gru_native {gru_native.__version__} vs torch.nn.GRU (torch {torch.__version__}), "
          f"{args.device}, {args.dtype}; {machine}")
    print(f"# {time.strftime('%Y-%m-%d')}; command: python {' '.join(sys.argv)}")
    header = f"{'shape':<14} {'(T,N,C,H,L,dir)':<22} {'mode':<10} {'nn.GRU':>11} " \
             f"{'gru_native':>11} {'speedup':>8} {'rounds':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for shape in shapes:
        for mode in modes:
            case = build_case(shape, mode, args.device, dtype)
            result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
            ref_t = result["nn.GRU"]["median_s"]
            our_t = result["gru_native"]["median_s"]
            speedup = ref_t / our_t
            print(f"{shape.name:<14} {shape.describe():<22} {mode:<10} {ref_t * 1e3:>9.3f}ms "
                  f"{our_t * 1e3:>9.3f}ms {speedup:>7.2f}x {result['gru_native']['rounds']:>7}",
                  flush=True)
            rows.append({"shape": shape.name, "dims": shape.describe(), "mode": mode,
                         "results": result, "speedup_vs_nn_gru": speedup})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                       "device": args.device, "dtype": args.dtype,
                       "torch": torch.__version__, "gru_native": gru_native.build_info(),
                       "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
