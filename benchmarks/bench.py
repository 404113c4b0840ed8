"""gru_native beside torch.nn.GRU (and other peers), in one process.

For every shape and mode, the implementations run interleaved (one call of each per round) after
a warm-up, with the same weights and inputs; the table shows each one's median and the ratio
peer median / gru_native median ("x faster" when > 1).

    python benchmarks/bench.py                        # canonical dense shapes and packed cases
    python benchmarks/bench.py --shapes seed,small --modes inference
    python benchmarks/bench.py --json results.json    # also write the numbers
    python benchmarks/bench.py --plot speedup.png     # speedup against hidden size and batch

Dense shapes are (T, N, C, H, layers, direction). When onnxruntime and onnx are installed
(`pip install onnx onnxruntime`), ONNX Runtime's GRU operator joins dense float32 inference as a
peer (its output is checked against nn.GRU's first). Packed cases feed the same PackedSequence to
every implementation; gru_native also runs two dense references there: the padded batch
(T_max x N rows) and a dense batch with the same number of rows as the packed data
(N x ceil(sum(lengths) / N)).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gru_native

REFERENCE = "nn.GRU"
OURS = "gru_native"
ORT = "onnxruntime"


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    N: int
    C: int
    H: int
    layers: int
    bidirectional: bool
    lengths: Optional[Sequence[int]] = None  # packed input when given (len N, max T)

    def describe(self) -> str:
        base = (f"{self.T},{self.N},{self.C},{self.H},{self.layers},"
                f"{'bi' if self.bidirectional else 'uni'}")
        return base + (f" sum(len)={sum(self.lengths)}" if self.lengths else "")


def _uniform_lengths(n: int, low: int, high: int, seed: int) -> List[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (n,), generator=gen).tolist()


CANONICAL = [
    Shape("seed", 9, 3, 5, 5, 1, False),
    Shape("seed-2L-bi", 9, 3, 5, 5, 2, True),
    Shape("small", 100, 32, 64, 64, 1, False),
    Shape("medium-2L-bi", 100, 32, 256, 256, 2, True),
    Shape("large", 50, 64, 512, 1024, 1, False),
    Shape("latency-B1", 200, 1, 256, 256, 1, False),
]
_UNIFORM = _uniform_lengths(32, 10, 100, seed=0)
_UNIFORM[0] = 100  # T_max is 100
PACKED = [
    Shape("packed-uniform", 100, 32, 256, 256, 1, False, tuple(_UNIFORM)),
    Shape("packed-skewed", 100, 32, 256, 256, 1, False, tuple([100] + [5] * 31)),
]
ALL_SHAPES = CANONICAL + PACKED
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


def _runner(module: nn.Module, x, mode: str) -> Callable[[], None]:
    """A callable running one inference (no_grad forward) or training (forward + backward) step."""
    if mode == "inference":
        def run():
            with torch.no_grad():
                module(x)
        return run

    if isinstance(x, torch.Tensor):
        x = x.detach().clone().requires_grad_()
        data = x
    else:  # PackedSequence: gradients flow to its data
        data = x.data.detach().clone().requires_grad_()
        x = type(x)(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)

    def run():
        out, h = module(x)
        out = out if isinstance(out, torch.Tensor) else out.data
        (out.sum() + h.sum()).backward()
    return run


# -- ONNX Runtime's GRU operator, an optional peer for dense inference ---------------------------


def _onnx_gru_model(ref: nn.GRU, T: int, N: int):
    """ref as an ONNX graph of GRU operators (one per layer, linear_before_reset=1). ONNX orders
    the gates z, r, h where PyTorch has r, z, n; layers are chained through
    Transpose + Reshape of Y [T, D, N, H] into [T, N, D*H]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, L = ref.hidden_size, ref.num_layers
    D = 2 if ref.bidirectional else 1

    def zrn(w):  # PyTorch's (r, z, n) blocks -> ONNX's (z, r, h)
        r, z, n = w.detach().chunk(3, 0)
        return torch.cat([z, r, n], 0)

    nodes, inits, x_name, hns = [], [], "X", []
    for layer in range(L):
        sfx = [""] + (["_reverse"] if D == 2 else [])
        w = torch.stack([zrn(getattr(ref, f"weight_ih_l{layer}{s}")) for s in sfx])
        r = torch.stack([zrn(getattr(ref, f"weight_hh_l{layer}{s}")) for s in sfx])
        if ref.bias:
            b = torch.stack([torch.cat([zrn(getattr(ref, f"bias_ih_l{layer}{s}")),
                                        zrn(getattr(ref, f"bias_hh_l{layer}{s}"))]) for s in sfx])
        else:
            b = torch.zeros(D, 6 * H)
        for name, t in ((f"W{layer}", w), (f"R{layer}", r), (f"B{layer}", b)):
            inits.append(numpy_helper.from_array(t.float().numpy(), name))
        nodes.append(helper.make_node(
            "GRU", [x_name, f"W{layer}", f"R{layer}", f"B{layer}"], [f"Y{layer}", f"Yh{layer}"],
            hidden_size=H, linear_before_reset=1,
            direction="bidirectional" if D == 2 else "forward"))
        nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"],
                                      perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{layer}", "shape3"], [f"X{layer + 1}"]))
        x_name = f"X{layer + 1}"
        hns.append(f"Yh{layer}")
    inits.append(numpy_helper.from_array(
        torch.tensor([0, 0, -1], dtype=torch.int64).numpy(), "shape3"))
    nodes.append(helper.make_node("Identity", [x_name], ["output"]))
    nodes.append(helper.make_node("Concat", hns, ["h_n"], axis=0))
    graph = helper.make_graph(
        nodes, "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, ref.input_size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [T, N, D * H]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L * D, N, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_runner(ref: nn.GRU, x: torch.Tensor) -> Optional[Callable[[], None]]:
    """An ONNX Runtime session running ref on x (checked against ref first), or None when
    onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model = _onnx_gru_model(ref, x.shape[0], x.shape[1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Idle ORT threads must not spin and steal the cores from the other implementations.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"X": x.numpy()}
    out, h_n = session.run(None, feed)
    with torch.no_grad():
        ref_out, ref_h = ref(x)
    err = max((torch.from_numpy(out) - ref_out).abs().max().item(),
              (torch.from_numpy(h_n) - ref_h).abs().max().item())
    if not err < 1e-4:
        raise RuntimeError(f"ONNX Runtime's GRU disagrees with nn.GRU: max |diff| {err:.2e}")

    def run():
        session.run(None, feed)
    return run


CUDA_PATHS = ("gemm", "persistent")


def _with_cuda_path(fn: Callable[[], None], path: str) -> Callable[[], None]:
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


def build_case(shape: Shape, mode: str, device: str, dtype: torch.dtype) -> Case:
    torch.manual_seed(0)
    ref = nn.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                 device=device, dtype=dtype)
    ours = gru_native.GRU(shape.C, shape.H, shape.layers, bidirectional=shape.bidirectional,
                          device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape.T, shape.N, shape.C, device=device, dtype=dtype)
    case = Case(shape, mode)
    if shape.lengths is None:
        case.fns[REFERENCE] = _runner(ref, x, mode)
        case.fns[OURS] = _runner(ours, x, mode)
        if device.startswith("cuda"):
            # Each recurrence path forced, beside the automatic choice: the figures the
            # persistent-path rule is measured from. A path that cannot run the shape is left out.
            for path in CUDA_PATHS:
                run = _with_cuda_path(_runner(ours, x, mode), path)
                try:
                    run()
                except RuntimeError:
                    continue
                case.fns[f"{OURS}[{path}]"] = run
        if mode == "inference" and device == "cpu" and dtype == torch.float32:
            ort_run = onnxruntime_runner(ref, x)
            if ort_run is not None:
                case.fns[ORT] = ort_run
        return case
    packed = pack_padded_sequence(x, list(shape.lengths), enforce_sorted=False)
    case.fns[REFERENCE] = _runner(ref, packed, mode)
    case.fns[OURS] = _runner(ours, packed, mode)
    case.fns[f"{OURS} dense padded"] = _runner(ours, x, mode)
    rows_T = math.ceil(sum(shape.lengths) / shape.N)
    same_rows = torch.randn(rows_T, shape.N, shape.C, device=device, dtype=dtype)
    case.fns[f"{OURS} dense same rows"] = _runner(ours, same_rows, mode)
    return case


def measure(case: Case, device: str, budget_s: float, min_rounds: int,
            max_rounds: int) -> Dict[str, dict]:
    """Interleaved medians. Rounds: as many as fit the time budget, within [min, max]."""
    names = list(case.fns)
    first = {}
    for name in names:  # warm-up (first calls allocate, fill caches)
        for _ in range(2):
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


def _fmt_time(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}ms" if ms < 10 else (f"{ms:.2f}ms" if ms < 100 else f"{ms:.1f}ms")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(s.name for s in ALL_SHAPES),
                        help="comma-separated shape names (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="inference,training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "float16", "bfloat16"],
                        help="half types on CUDA only")
    parser.add_argument("--grid", choices=["canonical", "gpu"], default="canonical",
                        help="gpu: batch 1/8/64/256 x H 128/256/512/1024 x 1-2 layers x "
                             "uni/bi (C=H) at each of --steps")
    parser.add_argument("--steps", default="200",
                        help="comma-separated sequence lengths for --grid gpu (default 200)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timing per shape and mode (default 3)")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=500)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG",
                        help="instead of the canonical shapes, sweep the hidden size and the "
                             "batch and draw speedup curves (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.plot:
        return sweep(args)

    dtype = getattr(torch, args.dtype)
    if args.grid == "gpu":
        shapes = [Shape(f"T{t}-B{n}-H{h}-L{l}-{'bi' if bi else 'uni'}", t, n, h, h, l, bi)
                  for t in (int(v) for v in args.steps.split(","))
                  for n in (1, 8, 64, 256) for h in (128, 256, 512, 1024)
                  for l in (1, 2) for bi in (False, True)]
    else:
        by_name = {s.name: s for s in ALL_SHAPES}
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
    print("# each cell: median time (peer median / gru_native median)")
    rows = []
    for shape in shapes:
        for mode in modes:
            case = build_case(shape, mode, args.device, dtype)
            result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
            ours = result[OURS]["median_s"]
            cells = []
            for name, r in result.items():
                ratio = "" if name == OURS else f" ({r['median_s'] / ours:.2f}x)"
                cells.append(f"{name} {_fmt_time(r['median_s'])}{ratio}")
            print(f"{shape.name:<15} {shape.describe():<24} {mode:<9} | " + " | ".join(cells)
                  + f" | rounds {result[OURS]['rounds']}", flush=True)
            rows.append({"shape": shape.name, "dims": shape.describe(), "mode": mode,
                         "lengths": list(shape.lengths) if shape.lengths else None,
                         "results": result,
                         "speedup_vs_nn_gru": result[REFERENCE]["median_s"] / ours})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                       "device": args.device, "dtype": args.dtype,
                       "torch": torch.__version__, "gru_native": gru_native.build_info(),
                       "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=2)
    return 0


SWEEP_H = (32, 64, 128, 256, 512, 1024)
SWEEP_N = (1, 2, 4, 8, 16, 32, 64, 128)


def sweep(args) -> int:
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
                      f"nn.GRU {_fmt_time(result[REFERENCE]['median_s'])}  gru_native "
                      f"{_fmt_time(result[OURS]['median_s'])}  {speedup:.2f}x", flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
