"""bench.py --group stepwise and --group sweep: step-wise calls from a carried hidden state.

stepwise: nn.GRUCell vs gru_native.GRUCell, then nn.GRU vs gru_native.GRU at a few short T, every
row beside the weight floor (one read of the layer's weights, timed in the same rounds). sweep:
nn.GRU vs gru_native.GRU over a T x N x H grid, then the worst ratio and the counts below 1.0x and
1.2x. --batches, --hiddens and --seq-lens override a grid; --quick shrinks them.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

import gru_native
from harness import OURS, REFERENCE, Case, build_case, fmt_fine, measure
from shapes import Shape

CELL_REFERENCE = "nn.GRUCell"
FLOOR = "weight floor"
STEP_N = (1, 8, 64)
STEP_H = (64, 256, 1024)
STEP_T = (1, 2, 4)          # --group stepwise, GRU rows
GRID_T = (1, 2, 8, 64)      # --group sweep
QUICK_N, QUICK_H, QUICK_T = (1, 8), (64,), (1, 2)


def weight_floor(module: nn.Module) -> Callable[[], None]:
    """The time to stream module's weights once: for one layer, W_ih, W_hh, b_ih and b_hh, the
    bytes that one step must read. One torch.sum per parameter, on detached views of the
    parameters themselves (their own storage, not copies), without autograd: a vectorised (on
    CPU, threaded) reduction that reads each byte once and writes a scalar. In a probe on an
    idle 2-vCPU box it ran at ~50 GB/s on H=1024's 25 MB, ahead of sum(out=),
    torch.ops.aten.sum.default and amax (within 6%) and of torch._foreach_norm (4x slower). At
    small H the fixed cost of the four op calls (~1.5 us each on CPU) dominates it. Like the
    implementations it is threaded, so it suffers as they do when the cores are shared. A
    training step reads the weights at least twice (forward, and backward for d(input)/d(h))
    and writes their gradients, so there "ours / floor" is a yardstick, not a bound."""
    tensors = [p.detach() for p in module.parameters()]

    def run():
        with torch.no_grad():
            for t in tensors:
                torch.sum(t)
    return run


def cell_runner(module: nn.Module, x: torch.Tensor, hx: torch.Tensor,
                mode: str) -> Callable[[], None]:
    """One GRUCell step from the carried state hx: no_grad forward, or forward + backward of the
    output's sum with the input requiring grad (hx, a carried state, does not)."""
    if mode == "inference":
        def run():
            with torch.no_grad():
                module(x, hx)
        return run
    x = x.detach().clone().requires_grad_()

    def run():
        module(x, hx).sum().backward()
    return run


def build_cell_case(shape: Shape, mode: str, device: str, dtype: torch.dtype) -> Case:
    """nn.GRUCell and gru_native.GRUCell (same state_dict) on x [N, C] and hx [N, H]."""
    torch.manual_seed(0)
    ref = nn.GRUCell(shape.C, shape.H, device=device, dtype=dtype)
    ours = gru_native.GRUCell(shape.C, shape.H, device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape.N, shape.C, device=device, dtype=dtype)
    hx = torch.randn(shape.N, shape.H, device=device, dtype=dtype)
    case = Case(shape, mode, modules={CELL_REFERENCE: ref, OURS: ours})
    case.fns[CELL_REFERENCE] = cell_runner(ref, x, hx, mode)
    case.fns[OURS] = cell_runner(ours, x, hx, mode)
    return case


def _ints(option: Optional[str], default: Sequence[int], quick: Sequence[int],
          args) -> Sequence[int]:
    if option:
        return tuple(int(v) for v in option.split(","))
    return quick if args.quick else default


def stepwise(args, dtype: torch.dtype) -> List[dict]:
    """GRUCell (N x H), then GRU at T = 1, 2, 4 (T x N x H), C = H, one layer, unidirectional,
    each mode; every row with the weight floor measured in the same interleaved rounds."""
    Ns = _ints(args.batches, STEP_N, QUICK_N, args)
    Hs = _ints(args.hiddens, STEP_H, QUICK_H, args)
    Ts = _ints(args.seq_lens, STEP_T, QUICK_T, args)
    modes = args.modes.split(",")
    specs = [("cell", Shape(f"cell-B{n}-H{h}", 1, n, h, h, 1, False)) for n in Ns for h in Hs]
    specs += [("gru", Shape(f"gru-T{t}-B{n}-H{h}", t, n, h, h, 1, False))
              for t in Ts for n in Ns for h in Hs]
    width = max(len(s.name) for _, s in specs)
    print("# stepwise: nn.GRUCell vs gru_native.GRUCell (dims N,C,H), then nn.GRU vs "
          "gru_native.GRU (dims T,N,C,H,layers,dir), from a carried hidden state (hx / h_0 "
          "given, no grad); training: forward + backward of the output sum (GRU: + h_n), input "
          "requiring grad")
    print(f"# {FLOOR}: one read of the layer's W_ih, W_hh, b_ih, b_hh (torch.sum per "
          "parameter), interleaved with the others; not a peer: 'ours = k x floor'")
    rows = []
    for kind, shape in specs:
        for mode in modes:
            if kind == "cell":
                case = build_cell_case(shape, mode, args.device, dtype)
                reference, dims = CELL_REFERENCE, f"{shape.N},{shape.C},{shape.H}"
            else:
                case = build_case(shape, mode, args.device, dtype, with_peers=shape.T == 1,
                                  h0=True)
                reference, dims = REFERENCE, shape.describe()
            case.fns[FLOOR] = weight_floor(case.modules[OURS])
            result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
            ours = result[OURS]["median_s"]
            floor = result[FLOOR]["median_s"]
            cells = []
            for name, r in result.items():
                if name == FLOOR:
                    continue
                ratio = "" if name == OURS else f" ({r['median_s'] / ours:.2f}x)"
                cells.append(f"{name} {fmt_fine(r['median_s'])}{ratio}")
            cells.append(f"floor {fmt_fine(floor)} (ours = {ours / floor:.1f}x floor)")
            print(f"{shape.name:<{width}} {dims:<20} {mode:<9} | " + " | ".join(cells)
                  + f" | rounds {result[OURS]['rounds']}", flush=True)
            weight_bytes = sum(p.numel() * p.element_size()
                               for p in case.modules[OURS].parameters())
            rows.append({"kind": kind, "shape": shape.name, "dims": dims, "mode": mode,
                         "reference": reference, "results": result,
                         "speedup_vs_reference": result[reference]["median_s"] / ours,
                         "floor_s": floor, "weight_bytes": weight_bytes,
                         "ours_over_floor": ours / floor})
    return rows


def grid_sweep(args, dtype: torch.dtype) -> dict:
    """nn.GRU vs gru_native.GRU over T x N x H (C = H, one layer, unidirectional, h_0 given),
    each mode; every point as measured, then the worst ratio and the counts below 1.0x / 1.2x."""
    Ns = _ints(args.batches, STEP_N, QUICK_N, args)
    Hs = _ints(args.hiddens, STEP_H, QUICK_H, args)
    Ts = _ints(args.seq_lens, GRID_T, QUICK_T, args)
    modes = args.modes.split(",")
    total = len(Ts) * len(Ns) * len(Hs) * len(modes)
    print(f"# sweep: T {Ts} x N {Ns} x H {Hs} (C = H), 1 layer, uni, h_0 given; "
          f"ratio = nn.GRU median / gru_native median")
    points = []
    for t in Ts:
        for n in Ns:
            for h in Hs:
                for mode in modes:
                    shape = Shape(f"T{t}-B{n}-H{h}", t, n, h, h, 1, False)
                    case = build_case(shape, mode, args.device, dtype, with_peers=False, h0=True)
                    result = measure(case, args.device, args.budget, args.min_rounds,
                                     args.max_rounds)
                    ref, ours = result[REFERENCE]["median_s"], result[OURS]["median_s"]
                    points.append({"T": t, "N": n, "H": h, "mode": mode, "results": result,
                                   "speedup_vs_nn_gru": ref / ours})
                    print(f"[{len(points)}/{total}] T={t:<3} N={n:<3} H={h:<5} {mode:<9} "
                          f"nn.GRU {fmt_fine(ref)}  gru_native {fmt_fine(ours)}  "
                          f"{ref / ours:.2f}x  rounds {result[OURS]['rounds']}", flush=True)

    def where(p):
        return f"T={p['T']} N={p['N']} H={p['H']} {p['mode']}"
    worst = min(points, key=lambda p: p["speedup_vs_nn_gru"])
    below_1 = [p for p in points if p["speedup_vs_nn_gru"] < 1.0]
    below_12 = [p for p in points if p["speedup_vs_nn_gru"] < 1.2]
    print(f"# worst: {worst['speedup_vs_nn_gru']:.2f}x at {where(worst)}")
    print(f"# below 1.0x: {len(below_1)}/{total}"
          + (f" ({', '.join(where(p) for p in below_1)})" if below_1 else ""))
    print(f"# below 1.2x: {len(below_12)}/{total}")
    return {"points": points, "worst": {"point": where(worst),
                                        "speedup_vs_nn_gru": worst["speedup_vs_nn_gru"]},
            "below_1.0x": len(below_1), "below_1.2x": len(below_12), "total": total}
