"""bench.py --group lowp: low-precision CPU inference, gru_native beside its peers.

Per shape, interleaved in one process after a warm-up (harness.measure), the same weights and
inputs: gru_native in float32 (the baseline of the "x" column: its median / the row's median),
in bfloat16 (the model and its input in bfloat16), with bfloat16 weights and with int8 weights
(gru_native.quantize); nn.GRU in bfloat16; torch.ao's dynamic int8 GRU; OpenVINO at its default
inference precision (bf16 where the CPU has it, else f32). Beside each time: the output's max
abs and rms error against a float64 nn.GRU with the same weights. A peer that is not installed is
left out with a line on stderr. Shapes: the canonical medium-2L-bi, large and latency-B1, then
step-wise calls from a carried state: T=1 streaming (1, 1, 1024, 1024, 2 layers), GRU at T=1
with H=256, and GRUCell N=1 at H=256 and 1024 (--shapes picks by name).

Interleaved, each call finds its weights evicted by the others' (a model whose other layers run
between its GRU's calls). The step-wise shapes are also timed warm: each implementation alone,
called back to back (one GRU called step after step, its weights left in the caches), the median
over 5 rounds (the implementations taking turns) of the mean time per call ("warm", with its own
"x" against gru_native f32 warm).
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import gru_native
import harness
from harness import Case, fmt_fine, measure
from peers import OPENVINO, PEERS, installed, openvino_session
from shapes import ALL_SHAPES, Shape, by_names

F32 = "gru_native f32"
LOWP_SHAPES = [s for s in by_names("medium-2L-bi,large,latency-B1")] + [
    Shape("stream-1024-2L", 1, 1, 1024, 1024, 2, False),
    Shape("stream-256", 1, 1, 256, 256, 1, False),
    Shape("cell-256", 1, 1, 256, 256, 1, False),
    Shape("cell-1024", 1, 1, 1024, 1024, 1, False),
]
OPENVINO_DEFAULT = "OpenVINO default"
DEFAULT_SHAPES = ",".join(s.name for s in ALL_SHAPES)  # bench.py's --shapes when not given


def _torch_ao_int8(module: nn.Module) -> Optional[nn.Module]:
    """torch.ao's dynamic int8 version of module (nn.GRU / nn.GRUCell), None where absent."""
    ao = getattr(torch.ao, "quantization", None)
    if ao is None or not hasattr(ao, "quantize_dynamic"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao.quantize_dynamic(nn.Sequential(copy.deepcopy(module)),
                                   {nn.GRU, nn.GRUCell}, dtype=torch.qint8)[0]


def _models(shape: Shape) -> Dict[str, nn.Module]:
    """name -> module, all with one set of weights (nn.GRU's initialisation, seeded)."""
    torch.manual_seed(0)
    cell = shape.name.startswith("cell")
    if cell:
        ref = nn.GRUCell(shape.C, shape.H)
        ours = gru_native.GRUCell(shape.C, shape.H)
    else:
        ref = nn.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional)
        ours = gru_native.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional)
    ours.load_state_dict(ref.state_dict())
    models = {
        F32: ours,
        "gru_native bf16": copy.deepcopy(ours).to(torch.bfloat16),
        "gru_native bf16 weights": gru_native.quantize(copy.deepcopy(ours), torch.bfloat16),
        "gru_native int8": gru_native.quantize(copy.deepcopy(ours)),
        "nn.GRU bf16": copy.deepcopy(ref).to(torch.bfloat16),
        "reference f64": copy.deepcopy(ref).double(),
    }
    ao = _torch_ao_int8(ref)
    if ao is not None:
        models["torch.ao int8"] = ao
    else:
        print("# peer torch.ao int8 skipped: this torch has no torch.ao.quantization",
              file=sys.stderr)
    return models


def _input_dtype(name: str) -> torch.dtype:
    """The dtype of the inputs each of _models' modules takes (quantized ones: float32)."""
    if name == "reference f64":
        return torch.float64
    return torch.bfloat16 if name.endswith("bf16") else torch.float32


def _caller(module: nn.Module, x: torch.Tensor, hx: torch.Tensor, cell: bool,
            dtype: torch.dtype):
    """A callable running module once on (x, hx) in dtype, returning the output (the layer
    output; a GRUCell's h')."""
    x, hx = x.to(dtype), hx.to(dtype)
    if cell:
        return lambda: module(x, hx)
    return lambda: module(x, hx)[0]


def measure_warm(fns: Dict[str, Callable], budget_s: float, runs: int = 5) -> Dict[str, float]:
    """name -> seconds per call, each implementation alone in a tight loop of n back-to-back
    calls (n fills budget_s over all of fns): the median over `runs` rounds of the mean per call,
    the implementations' loops taking turns in each round."""
    n = {}
    for name, fn in fns.items():
        fn()
        start = harness.clock()
        fn()
        once = max(harness.clock() - start, 1e-7)
        n[name] = max(3, int(budget_s / len(fns) / runs / once))
    per_call: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            fn()  # its weights back in the caches
            start = harness.clock()
            for _ in range(n[name]):
                fn()
            per_call[name].append((harness.clock() - start) / n[name])
    return {name: statistics.median(v) for name, v in per_call.items()}


def run_shape(shape: Shape, args) -> dict:
    cell = shape.name.startswith("cell")
    models = _models(shape)
    torch.manual_seed(1)
    D = 2 if shape.bidirectional else 1
    if cell:
        x, hx = torch.randn(shape.N, shape.C), torch.randn(shape.N, shape.H) * 0.5
    else:
        x = torch.randn(shape.T, shape.N, shape.C)
        hx = torch.randn(shape.layers * D, shape.N, shape.H) * 0.5
    calls: Dict[str, Callable] = {n: _caller(m, x, hx, cell, _input_dtype(n))
                                  for n, m in models.items()}
    outputs: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        truth = calls.pop("reference f64")().double()
        for name, call in calls.items():
            outputs[name] = call().double()
    runners = {}
    if not cell and installed(next(p for p in PEERS if p.name == OPENVINO)):
        run, output = openvino_session(models[F32], x, hx, precision=None)
        result, precision = output()
        name = f"{OPENVINO_DEFAULT} ({precision.replace('<Type: ', '').strip('>')})"
        runners[name] = run
        outputs[name] = torch.from_numpy(result).double()

    def timed(call):
        def run():
            with torch.no_grad():
                call()
        return run
    case = Case(shape, "inference", fns={**{n: timed(c) for n, c in calls.items()}, **runners})
    result = measure(case, "cpu", args.budget, args.min_rounds, args.max_rounds)
    warm = measure_warm(case.fns, args.budget) if shape.T == 1 else {}
    base = result[F32]["median_s"]
    rows = {}
    for name, r in result.items():
        err = (outputs[name] - truth).abs()
        rows[name] = {**r, "x_vs_f32": base / r["median_s"], "max_abs": err.max().item(),
                      "rms": err.square().mean().sqrt().item()}
        if warm:
            rows[name].update(warm_s=warm[name], warm_x_vs_f32=warm[F32] / warm[name])
    return rows


def lowp(args, dtype: torch.dtype) -> List[dict]:
    """The lowp group: every shape of LOWP_SHAPES (or --shapes, by name), inference."""
    known = {s.name: s for s in LOWP_SHAPES}
    asked = [n for n in args.shapes.split(",") if n in known]
    shapes = [known[n] for n in asked] if args.shapes != DEFAULT_SHAPES and asked else LOWP_SHAPES
    print("# lowp: inference from a carried hidden state; x = gru_native f32 median / median; "
          "errors: output vs float64 nn.GRU on the same weights (max abs, rms)")
    print(f"# low-precision paths: {gru_native.build_info()['cpu_lowp_paths']}")
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    out = []
    for shape in shapes:
        rows = run_shape(shape, args)
        dims = (f"N,C,H={shape.N},{shape.C},{shape.H}" if shape.name.startswith("cell")
                else shape.describe())
        print(f"{shape.name} ({dims}):")
        for name, r in rows.items():
            warm = (f"  warm {fmt_fine(r['warm_s']):>9} {r['warm_x_vs_f32']:5.2f}x"
                    if "warm_s" in r else "")
            print(f"  {name:<34} {fmt_fine(r['median_s']):>9} (min {fmt_fine(r['min_s']):>9})"
                  f"  {r['x_vs_f32']:5.2f}x  err {r['max_abs']:.1e} / {r['rms']:.1e}"
                  f"  rounds {r['rounds']}{warm}", flush=True)
        out.append({"shape": shape.name, "dims": dims, "results": rows})
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    return out
