"""The timing harness every bench.py group shares.

A Case holds one callable per implementation, all computing the same thing on the same weights
and inputs; measure() runs them interleaved (one call of each per round) after a warm-up and
returns each one's median. Also here: the runners (inference / training steps), the header every
run prints (start_run), the time formats, and the Markdown and JSON writers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native
from peers import peer_runners
from shapes import Shape

REFERENCE = "nn.GRU"
OURS = "gru_native"
CUDA_PATHS = ("gemm", "persistent")
# The clock of measure(): wall time, or with --clock cpu the CPU time of this process (every
# thread of it: a peer's worker threads count too). On a machine shared with other work, CPU
# time leaves out the time spent waiting for a core; the CPU only.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


@dataclass
class Case:
    """One (shape, mode): a callable per implementation, all computing the same thing."""
    shape: Shape
    mode: str
    fns: Dict[str, Callable[[], None]] = field(default_factory=dict)
    modules: Dict[str, nn.Module] = field(default_factory=dict)  # ref and ours, by name


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def runner(module: nn.Module, x, mode: str,
           hx: Optional[torch.Tensor] = None) -> Callable[[], None]:
    """A callable running one inference (no_grad forward) or training (forward + backward) step;
    hx, when given, is the initial hidden state (a carried state: it does not require grad)."""
    args = (x,) if hx is None else (x, hx)
    if mode == "inference":
        def run():
            with torch.no_grad():
                module(*args)
        return run

    if isinstance(x, torch.Tensor):
        x = x.detach().clone().requires_grad_()
    else:  # PackedSequence: gradients flow to its data
        data = x.data.detach().clone().requires_grad_()
        x = type(x)(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    args = (x,) if hx is None else (x, hx)

    def run():
        out, h = module(*args)
        out = out if isinstance(out, torch.Tensor) else out.data
        (out.sum() + h.sum()).backward()
    return run


def with_cuda_path(fn: Callable[[], None], path: str) -> Callable[[], None]:
    """fn run with GRU_NATIVE_CUDA_PATH=path (read by the CUDA ops on every call)."""
    def run():
        old = os.environ.get("GRU_NATIVE_CUDA_PATH")
        os.environ["GRU_NATIVE_CUDA_PATH"] = path
        try:
            fn()
        finally:
            if old is None:
                del os.environ["GRU_NATIVE_CUDA_PATH"]
            else:
                os.environ["GRU_NATIVE_CUDA_PATH"] = old
    return run


def build_case(shape: Shape, mode: str, device: str, dtype: torch.dtype,
               with_peers: bool = True, h0: bool = False,
               force_cuda_paths: bool = False) -> Case:
    """The case for one shape and mode: nn.GRU and gru_native.GRU with the same state_dict.
    Dense shapes: also each CUDA recurrence path forced (on cuda, or on any device with
    force_cuda_paths, as --cuda-paths asks) and, with_peers, the peers that apply (peers.py).
    Packed shapes: also gru_native on the dense padded batch and on a dense batch of the same
    rows. h0=True passes every implementation the same random initial hidden state (a state
    carried from earlier steps, as step-wise callers do; it does not require grad)."""
    torch.manual_seed(0)
    ref = nn.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                 device=device, dtype=dtype)
    ours = gru_native.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                          device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape.T, shape.N, shape.C, device=device, dtype=dtype)
    D = 2 if shape.bidirectional else 1
    hx = (torch.randn(shape.layers * D, shape.N, shape.H, device=device, dtype=dtype)
          if h0 else None)
    case = Case(shape, mode, modules={REFERENCE: ref, OURS: ours})
    if shape.lengths is None:
        case.fns[REFERENCE] = runner(ref, x, mode, hx)
        case.fns[OURS] = runner(ours, x, mode, hx)
        if device.startswith("cuda") or force_cuda_paths:
            # Each recurrence path forced, beside the automatic choice: the figures the
            # persistent-path rule is measured from. A path that cannot run the shape is left out.
            for path in CUDA_PATHS:
                run = with_cuda_path(runner(ours, x, mode, hx), path)
                try:
                    run()
                except RuntimeError:
                    continue
                case.fns[f"{OURS}[{path}]"] = run
        if with_peers:
            case.fns.update(peer_runners(ref, x, hx, mode, device, dtype))
        return case
    packed = pack_padded_sequence(x, list(shape.lengths), enforce_sorted=False)
    case.fns[REFERENCE] = runner(ref, packed, mode, hx)
    case.fns[OURS] = runner(ours, packed, mode, hx)
    case.fns[f"{OURS} dense padded"] = runner(ours, x, mode, hx)
    rows_T = math.ceil(sum(shape.lengths) / shape.N)
    same_rows = torch.randn(rows_T, shape.N, shape.C, device=device, dtype=dtype)
    case.fns[f"{OURS} dense same rows"] = runner(ours, same_rows, mode, hx)
    return case


def measure(case: Case, device: str, budget_s: float, min_rounds: int,
            max_rounds: int) -> Dict[str, dict]:
    """Interleaved medians. Rounds: as many as fit the time budget, within [min, max]."""
    names = list(case.fns)
    first = {}
    for name in names:  # warm-up (first calls allocate, fill caches)
        for _ in range(2):
            sync(device)
            start = clock()
            case.fns[name]()
            sync(device)
            first[name] = clock() - start
    per_round = sum(first.values())
    rounds = int(max(min_rounds, min(max_rounds, budget_s / max(per_round, 1e-9))))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            sync(device)
            start = clock()
            case.fns[name]()
            sync(device)
            samples[name].append(clock() - start)
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "rounds": len(s)}
            for n, s in samples.items()}


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


def command_line() -> str:
    return "python " + " ".join(sys.argv)


def start_run(args) -> str:
    """TF32 off on CUDA, the clock, then the header lines (versions, device, dtype, machine,
    date, command, clock); returns the machine's description."""
    global clock
    name = getattr(args, "clock", "wall")
    if name == "cpu" and not args.device.startswith("cpu"):
        raise SystemExit("--clock cpu times CPU work only: use --clock wall with --device cuda")
    clock = CLOCKS[name]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    machine = machine_description(args.device)
    print(f"# gru_native {gru_native.__version__} vs torch.nn.GRU (torch {torch.__version__}), "
          f"{args.device}, {args.dtype}; {machine}")
    print(f"# {time.strftime('%Y-%m-%d')}; command: {command_line()}")
    print("# each cell: median time (peer median / gru_native median)"
          + ("; times are this process's CPU time (--clock cpu)" if name == "cpu" else ""))
    return machine


def fmt_time(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}ms" if ms < 10 else (f"{ms:.2f}ms" if ms < 100 else f"{ms:.1f}ms")


def fmt_fine(seconds: float) -> str:
    """fmt_time, with microseconds below 0.1 ms (step-wise calls are that short)."""
    return f"{seconds * 1e6:.1f}us" if seconds < 1e-4 else fmt_time(seconds)


def write_json(path: str, machine: str, args, payload: dict) -> None:
    """The run's results: date, machine, device, dtype, versions and command, then payload."""
    with open(path, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                   "device": args.device, "dtype": args.dtype,
                   "torch": torch.__version__, "gru_native": gru_native.build_info(),
                   "command": command_line(), **payload}, f, indent=2)


def write_markdown(path: str, rows: List[dict], machine: str, args, skipped: List[str]) -> None:
    """The table of the shape rows as Markdown, appended to path: one row per (shape, mode), a
    column per implementation (median, and peer / gru_native in parentheses)."""
    names: List[str] = []
    for row in rows:
        names += [n for n in row["results"] if n not in names]
    lines = [f"### {args.device} {args.dtype} — {machine} — {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command_line()}` (torch {torch.__version__}"
             + ("; TF32 off" if args.device.startswith("cuda") else "") + ")", "",
             "| shape | T,N,C,H,L,dir | mode | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        ours = row["results"][OURS]["median_s"]
        cells = []
        for name in names:
            r = row["results"].get(name)
            if r is None:
                cells.append("—")
            elif name == OURS:
                cells.append(fmt_time(r["median_s"]))
            else:
                cells.append(f"{fmt_time(r['median_s'])} ({r['median_s'] / ours:.2f}x)")
        lines.append(f"| {row['shape']} | {row['dims']} | {row['mode']} | " + " | ".join(cells)
                     + " |")
    if skipped:
        lines += ["", f"Not run (deadline {args.deadline:g} s): " + ", ".join(skipped)]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n\n")
