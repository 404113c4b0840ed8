"""bench.py --plot: speedup curves against the hidden size and against the batch (matplotlib)."""

from __future__ import annotations

import json
import sys
import time

import torch

from harness import OURS, REFERENCE, build_case, fmt_time, machine_description, measure
from shapes import Shape

SWEEP_H = (32, 64, 128, 256, 512, 1024)
SWEEP_N = (1, 2, 4, 8, 16, 32, 64, 128)


def plot_speedup(args) -> int:
    """Speedup against hidden size (T=50, N=32, C=H) and against batch (T=50, C=H=256), one
    layer, unidirectional, inference and training; prints every point as it is measured."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    modes = args.modes.split(",")
    axes = {
        "hidden size H (T=50, N=32, C=H)": [Shape(f"H={h}", 50, 32, h, h, 1, False)
                                           for h in SWEEP_H],
        "batch N (T=50, C=H=256)": [Shape(f"N={n}", 50, n, 256, 256, 1, False)
                                    for n in SWEEP_N],
    }
    total = sum(len(v) for v in axes.values()) * len(modes)
    done = 0
    points = {}
    print(f"# speedup sweep, {args.device}, {args.dtype}; {machine_description(args.device)}; "
          f"{time.strftime('%Y-%m-%d')}")
    for axis, shapes in axes.items():
        for shape in shapes:
            for mode in modes:
                result = measure(build_case(shape, mode, args.device, dtype), args.device,
                                 args.budget, args.min_rounds, args.max_rounds)
                speedup = result[REFERENCE]["median_s"] / result[OURS]["median_s"]
                points.setdefault((axis, mode), []).append(speedup)
                done += 1
                print(f"[{done}/{total}] {axis.split(' (')[0]}: {shape.name:<7} {mode:<9} "
                      f"nn.GRU {fmt_time(result[REFERENCE]['median_s'])}  gru_native "
                      f"{fmt_time(result[OURS]['median_s'])}  {speedup:.2f}x", flush=True)
    fig, panels = plt.subplots(1, 2, figsize=(11, 4))
    for panel, (axis, shapes) in zip(panels, axes.items()):
        xs = [s.H if axis.startswith("hidden") else s.N for s in shapes]
        for mode in modes:
            panel.plot(xs, points[(axis, mode)], marker="o", label=mode)
        panel.axhline(1.0, color="grey", linewidth=0.8)
        panel.set_xscale("log", base=2)
        panel.set_xlabel(axis)
        panel.set_ylabel("speedup vs torch.nn.GRU")
        panel.legend()
    fig.suptitle(f"gru_native vs torch.nn.GRU, {args.device} {args.dtype} "
                 f"({machine_description(args.device)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{axis} | {mode}": v for (axis, mode), v in points.items()}, f, indent=2)
    return 0
