"""bench.py's default run: a table of shapes (the canonical ones and the packed cases, or the
--grid gpu grid), every (shape, mode) one row, printed as measured; --markdown and --json."""

from __future__ import annotations

import time
from typing import List, Sequence

import torch

from harness import (OURS, REFERENCE, build_case, fmt_time, measure, start_run, write_json,
                     write_markdown)
from shapes import Shape


def run_shapes(args, shapes: Sequence[Shape]) -> int:
    """Every shape in every mode of --modes, until --deadline passes (the cases left are listed);
    then the Markdown table and the JSON, when asked."""
    dtype = getattr(torch, args.dtype)
    modes = args.modes.split(",")
    machine = start_run(args)
    rows: List[dict] = []
    started = time.perf_counter()
    skipped: List[str] = []
    for shape in shapes:
        for mode in modes:
            if args.deadline and time.perf_counter() - started > args.deadline:
                skipped.append(f"{shape.name} {mode}")
                continue
            case = build_case(shape, mode, args.device, dtype,
                              force_cuda_paths=args.cuda_paths)
            result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
            ours = result[OURS]["median_s"]
            cells = []
            for name, r in result.items():
                ratio = "" if name == OURS else f" ({r['median_s'] / ours:.2f}x)"
                cells.append(f"{name} {fmt_time(r['median_s'])}{ratio}")
            print(f"{shape.name:<15} {shape.describe():<24} {mode:<9} | " + " | ".join(cells)
                  + f" | rounds {result[OURS]['rounds']}", flush=True)
            rows.append({"shape": shape.name, "dims": shape.describe(), "mode": mode,
                         "lengths": list(shape.lengths) if shape.lengths else None,
                         "results": result,
                         "speedup_vs_nn_gru": result[REFERENCE]["median_s"] / ours})
    if skipped:
        print(f"# deadline ({args.deadline:g} s) passed: {len(skipped)} cases not run: "
              + ", ".join(skipped))
    if args.markdown:
        write_markdown(args.markdown, rows, machine, args, skipped)
    if args.json:
        write_json(args.json, machine, args, {"rows": rows})
    return 0
