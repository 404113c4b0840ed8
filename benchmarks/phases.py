"""bench.py --group phases: where a training step's time goes, and how far each phase's products
run from the machine's best rate for the same products.

For every shape of --shapes (dense, CPU, float32 or float64), gru_native runs training steps
(forward + backward) with its per-phase timing on (csrc/phases.h): the input projections, the
forward and backward recurrences, dW_hh, dW_ih and d(input), each with its multiply-adds, hence
its rate in the op (GFLOP/s). Then, in the same run, each phase's matrix products alone, with the
operands laid out as the op lays them out: through ATen's mm (torch's BLAS), through gru_native's
own GEMM (csrc/cpu/gemm.h, what the op calls) and, when it is installed, through OpenVINO's
MatMul (oneDNN), interleaved, medians. A recurrence's product is one step's [N, H] x [H, 3H],
timed T times. "best" is the fastest of those for the phase, and "op / best" the phase's rate in
the op over it: what is left to gain, the op's own overheads (the gates, packing, threads' meeting
points) included.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import gru_native
from gru_native import _C
from harness import build_case
from shapes import Shape, by_names

MM, OURS_GEMM, ONEDNN = "ATen mm", "gru_native gemm", "oneDNN (OpenVINO)"


@dataclass
class Product:
    """C = A B with A [M, K] and B [K, N] laid out as the op lays them out: "n" a row-major
    operand, "t" a transposed row-major one; `count` such products per training step."""
    M: int
    N: int
    K: int
    layout: str
    count: int

    def flop(self) -> float:
        return 2.0 * self.M * self.N * self.K * self.count


def phase_products(shape: Shape) -> Dict[str, List[Product]]:
    """Each phase's products in one training step of shape (dense), per layer and direction."""
    R, H, G = shape.T * shape.N, shape.H, 3 * shape.H
    D = 2 if shape.bidirectional else 1
    out: Dict[str, List[Product]] = {k: [] for k in (
        "input projection", "forward recurrence", "backward recurrence", "dW_hh", "dW_ih",
        "d(input)")}
    for layer in range(shape.layers):
        C = shape.C if layer == 0 else D * H
        out["input projection"].append(Product(R, G, C, "nt", D))       # x W_ih^T
        out["dW_ih"].append(Product(G, C, R, "tn", D))                  # dG^T x
        out["d(input)"].append(Product(R, C, G, "nn", D))               # dG W_ih
    out["forward recurrence"].append(Product(shape.N, G, H, "nt", D * shape.layers * shape.T))
    # (The first step's product gives only dL/dh0, which a step from no h0 does not need.)
    out["backward recurrence"].append(
        Product(shape.N, H, G, "nn", D * shape.layers * max(shape.T - 1, 1)))
    out["dW_hh"].append(Product(G, H, R, "tn", D * shape.layers))       # dG^T h_{t-1}
    return out


def _operands(p: Product, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(p.M, p.K, dtype=dtype) if p.layout[0] == "n" else \
        torch.randn(p.K, p.M, dtype=dtype).t()
    b = torch.randn(p.K, p.N, dtype=dtype) if p.layout[1] == "n" else \
        torch.randn(p.N, p.K, dtype=dtype).t()
    return a, b


def _onednn(p: Product, a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
    """OpenVINO's MatMul of two inputs with the same transposes, f32, torch's thread count."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    ta, tb = p.layout[0] == "t", p.layout[1] == "t"
    pa = ops.parameter([p.K, p.M] if ta else [p.M, p.K], np.float32)
    pb = ops.parameter([p.N, p.K] if tb else [p.K, p.N], np.float32)
    model = ov.Model([ops.matmul(pa, pb, ta, tb)], [pa, pb])
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    feed = [(a.t() if ta else a).contiguous().numpy(), (b.t() if tb else b).contiguous().numpy()]
    return lambda: request.infer(feed)


def product_runners(p: Product, dtype: torch.dtype) -> Dict[str, Callable[[], None]]:
    a, b = _operands(p, dtype)
    c1 = torch.empty(p.M, p.N, dtype=dtype)
    c2 = torch.empty(p.M, p.N, dtype=dtype)
    runners = {MM: lambda: torch.mm(a, b, out=c1), OURS_GEMM: lambda: _C._cpu_gemm(a, b, c2)}
    if dtype == torch.float32 and importlib.util.find_spec("openvino") is not None:
        runners[ONEDNN] = _onednn(p, a, b)
    return runners


def time_products(products: Sequence[Product], dtype: torch.dtype, budget_s: float,
                  min_rounds: int) -> Dict[str, float]:
    """Seconds per training step's worth of the products (each product's median x its count),
    for each implementation, interleaved."""
    totals: Dict[str, float] = {}
    for p in products:
        runners = product_runners(p, dtype)
        for fn in runners.values():  # warm-up
            fn()
            fn()
        start = time.perf_counter()
        for fn in runners.values():
            fn()
        rounds = max(min_rounds, int(budget_s / max(time.perf_counter() - start, 1e-9)))
        samples: Dict[str, List[float]] = {n: [] for n in runners}
        for _ in range(rounds):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        for name, s in samples.items():
            totals[name] = totals.get(name, 0.0) + statistics.median(s) * p.count
    return totals


def op_phases(shape: Shape, dtype: torch.dtype, rounds: int) -> Dict[str, Tuple[float, float]]:
    """phase -> (seconds per training step, multiply-adds per step) in gru_native's op."""
    case = build_case(shape, "training", "cpu", dtype, with_peers=False)
    run = case.fns["gru_native"]
    for _ in range(2):
        run()
    per_round: Dict[str, List[float]] = {}
    madds: Dict[str, float] = {}
    for _ in range(rounds):
        _C._set_phase_timing(True)
        try:
            run()
            totals = _C._phase_totals()
        finally:
            _C._set_phase_timing(False)
        for name, (_, seconds, m) in totals.items():
            per_round.setdefault(name, []).append(seconds)
            madds[name] = m
    return {name: (statistics.median(s), madds[name]) for name, s in per_round.items()}


def phases(args, dtype: torch.dtype) -> List[dict]:
    """The table for the dense shapes of --shapes: per shape and phase, the op's time and rate,
    each implementation's rate for the same products, and op / best."""
    shapes = by_names(args.shapes)
    if args.device != "cpu" or dtype not in (torch.float32, torch.float64):
        sys.exit("--group phases: the CPU backend's phases, float32 or float64")
    if importlib.util.find_spec("openvino") is None:
        print("# oneDNN (OpenVINO) column skipped: openvino not installed (pip install openvino)",
              file=sys.stderr)
    rows = []
    print(f"{'shape':<14} {'phase':<20} {'op ms':>8} {'op GFLOP/s':>10} | "
          f"{MM:>9} {OURS_GEMM:>15} {ONEDNN:>17} | op / best")
    for shape in shapes:
        if shape.lengths is not None:
            continue
        in_op = op_phases(shape, dtype, max(args.min_rounds, 3))
        for phase, products in phase_products(shape).items():
            if phase not in in_op:
                continue
            seconds, m = in_op[phase]
            flop = sum(p.flop() for p in products)
            rates = {name: flop / s / 1e9
                     for name, s in time_products(products, dtype, args.budget / 6,
                                                  args.min_rounds).items()}
            op_rate = 2 * m / seconds / 1e9
            best = max(rates.values())
            cells = " ".join(f"{rates[n]:>{w}.1f}" if n in rates else f"{'-':>{w}}"
                             for n, w in ((MM, 9), (OURS_GEMM, 15), (ONEDNN, 17)))
            print(f"{shape.name:<14} {phase:<20} {seconds * 1e3:>8.2f} {op_rate:>10.1f} | "
                  f"{cells} | {op_rate / best:.2f}", flush=True)
            rows.append({"shape": shape.name, "phase": phase, "op_s": seconds,
                         "op_gflops": op_rate, "products_gflops": rates,
                         "op_over_best": op_rate / best})
    return rows
