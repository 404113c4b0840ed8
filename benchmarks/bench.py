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

Step-wise groups (instead of the canonical shapes; --modes, --device, --dtype, --budget,
--min-rounds, --max-rounds and --json apply; --batches, --hiddens, --seq-lens override a grid;
--quick shrinks every grid to N 1,8 x H 64 x T 1,2 and generates 10 tokens, for smoke tests):

    python benchmarks/bench.py --group stepwise       # GRUCell and GRU at T=1,2,4, with the floor
    python benchmarks/bench.py --group sweep          # T 1,2,8,64 x N 1,8,64 x H 64,256,1024
    python benchmarks/bench.py --group generate       # word_language_model generation loop
    python benchmarks/bench.py --group all-stepwise   # stepwise, then generate (not sweep)
    python benchmarks/bench.py --group stepwise --quick --budget 0.02 --min-rounds 2 --max-rounds 3

stepwise: nn.GRUCell vs gru_native.GRUCell (N 1,8,64 x H 64,256,1024, C = H), then nn.GRU vs
gru_native.GRU at T 1,2,4 on the same N x H (one layer, unidirectional), inference (no_grad) and
training (forward + backward of the output's sum; the input requires grad), all from a carried
hidden state (hx / h_0 given, not requiring grad); ONNX Runtime joins at T=1 float32 inference.
Every row also shows the "weight floor": the time to read the layer's W_ih, W_hh and biases
once (the bytes one step must read), measured in the same interleaved rounds; it is not a peer,
and the row prints "ours = k x floor". sweep: nn.GRU vs gru_native.GRU only, every point, then
the worst ratio and the counts of points below 1.0x and 1.2x. generate: an Embedding(10000,
650) -> 2-layer GRU(650) -> Linear(650, 10000) word model in eval, N=1, one word per call with
the hidden state carried, the next word sampled by torch.multinomial (seeded), --tokens (50)
words per timed round; the whole loop with nn.GRU and with gru_native.GRU (the same model and
weights otherwise), and the GRU's share (only the rnn calls, timed inside the loop).
"""

from __future__ import annotations

import argparse
import copy
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
    modules: Dict[str, nn.Module] = field(default_factory=dict)  # ref and ours, by name


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _runner(module: nn.Module, x, mode: str,
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
        data = x
    else:  # PackedSequence: gradients flow to its data
        data = x.data.detach().clone().requires_grad_()
        x = type(x)(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    args = (x,) if hx is None else (x, hx)

    def run():
        out, h = module(*args)
        out = out if isinstance(out, torch.Tensor) else out.data
        (out.sum() + h.sum()).backward()
    return run


# -- ONNX Runtime's GRU operator, an optional peer for dense inference ---------------------------


def _onnx_gru_model(ref: nn.GRU, T: int, N: int, with_h0: bool = False):
    """ref as an ONNX graph of GRU operators (one per layer, linear_before_reset=1). ONNX orders
    the gates z, r, h where PyTorch has r, z, n; layers are chained through
    Transpose + Reshape of Y [T, D, N, H] into [T, N, D*H]. with_h0: one more input, H0
    [L*D, N, H] (nn.GRU's h_0), sliced per layer into the operators' initial_h."""
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
        gru_inputs = [x_name, f"W{layer}", f"R{layer}", f"B{layer}"]
        if with_h0:
            for name, v in ((f"H0s{layer}", layer * D), (f"H0e{layer}", (layer + 1) * D)):
                inits.append(numpy_helper.from_array(
                    torch.tensor([v], dtype=torch.int64).numpy(), name))
            nodes.append(helper.make_node("Slice", ["H0", f"H0s{layer}", f"H0e{layer}", "axis0"],
                                          [f"H0_{layer}"]))
            gru_inputs += ["", f"H0_{layer}"]  # no sequence_lens
        nodes.append(helper.make_node(
            "GRU", gru_inputs, [f"Y{layer}", f"Yh{layer}"],
            hidden_size=H, linear_before_reset=1,
            direction="bidirectional" if D == 2 else "forward"))
        nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"],
                                      perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{layer}", "shape3"], [f"X{layer + 1}"]))
        x_name = f"X{layer + 1}"
        hns.append(f"Yh{layer}")
    inits.append(numpy_helper.from_array(
        torch.tensor([0, 0, -1], dtype=torch.int64).numpy(), "shape3"))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, ref.input_size])]
    if with_h0:
        inits.append(numpy_helper.from_array(torch.tensor([0], dtype=torch.int64).numpy(),
                                             "axis0"))
        inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, [L * D, N, H]))
    nodes.append(helper.make_node("Identity", [x_name], ["output"]))
    nodes.append(helper.make_node("Concat", hns, ["h_n"], axis=0))
    graph = helper.make_graph(
        nodes, "gru", inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [T, N, D * H]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L * D, N, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_runner(ref: nn.GRU, x: torch.Tensor,
                       hx: Optional[torch.Tensor] = None) -> Optional[Callable[[], None]]:
    """An ONNX Runtime session running ref on x (from the initial state hx when given; checked
    against ref first), or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model = _onnx_gru_model(ref, x.shape[0], x.shape[1], with_h0=hx is not None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Idle ORT threads must not spin and steal the cores from the other implementations.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"X": x.numpy()}
    if hx is not None:
        feed["H0"] = hx.numpy()
    out, h_n = session.run(None, feed)
    with torch.no_grad():
        ref_out, ref_h = ref(x) if hx is None else ref(x, hx)
    err = max((torch.from_numpy(out) - ref_out).abs().max().item(),
              (torch.from_numpy(h_n) - ref_h).abs().max().item())
    if not err < 1e-4:
        raise RuntimeError(f"ONNX Runtime's GRU disagrees with nn.GRU: max |diff| {err:.2e}")

    def run():
        session.run(None, feed)
    return run


CUDA_PATHS = ("gemm", "persistent")
_FORCE_CUDA_PATHS = False  # --cuda-paths: the forced-path entries on any device


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


def build_case(shape: Shape, mode: str, device: str, dtype: torch.dtype,
               with_ort: bool = True, h0: bool = False) -> Case:
    """The case for one shape and mode. with_ort=False leaves ONNX Runtime out; h0=True passes
    every implementation the same random initial hidden state (a state carried from earlier
    steps, as step-wise callers do; it does not require grad)."""
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
        case.fns[REFERENCE] = _runner(ref, x, mode, hx)
        case.fns[OURS] = _runner(ours, x, mode, hx)
        if device.startswith("cuda") or _FORCE_CUDA_PATHS:
            # Each recurrence path forced, beside the automatic choice: the figures the
            # persistent-path rule is measured from. A path that cannot run the shape is left out.
            for path in CUDA_PATHS:
                run = _with_cuda_path(_runner(ours, x, mode, hx), path)
                try:
                    run()
                except RuntimeError:
                    continue
                case.fns[f"{OURS}[{path}]"] = run
        if with_ort and mode == "inference" and device == "cpu" and dtype == torch.float32:
            ort_run = onnxruntime_runner(ref, x, hx)
            if ort_run is not None:
                case.fns[ORT] = ort_run
        return case
    packed = pack_padded_sequence(x, list(shape.lengths), enforce_sorted=False)
    case.fns[REFERENCE] = _runner(ref, packed, mode, hx)
    case.fns[OURS] = _runner(ours, packed, mode, hx)
    case.fns[f"{OURS} dense padded"] = _runner(ours, x, mode, hx)
    rows_T = math.ceil(sum(shape.lengths) / shape.N)
    same_rows = torch.randn(rows_T, shape.N, shape.C, device=device, dtype=dtype)
    case.fns[f"{OURS} dense same rows"] = _runner(ours, same_rows, mode, hx)
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


def start_run(args) -> str:
    """TF32 off on CUDA, then the header lines (versions, device, dtype, machine, date,
    command); returns the machine's description."""
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    machine = machine_description(args.device)
    print(f"# gru_native {gru_native.__version__} vs torch.nn.GRU (torch {torch.__version__}), "
          f"{args.device}, {args.dtype}; {machine}")
    print(f"# {time.strftime('%Y-%m-%d')}; command: python {' '.join(sys.argv)}")
    print("# each cell: median time (peer median / gru_native median)")
    return machine


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
                        help="gpu: batch (--batches, default 1,8,64,256) x H (--hiddens, "
                             "default 256,512,1024) x 1-2 layers x uni/bi (C=H) at each of "
                             "--steps")
    parser.add_argument("--steps", default="200",
                        help="comma-separated sequence lengths for --grid gpu (default 200)")
    parser.add_argument("--cuda-paths", action="store_true",
                        help="time each CUDA recurrence path forced (GRU_NATIVE_CUDA_PATH) "
                             "beside the automatic choice on any device (on by default on "
                             "cuda; for the CUDA emulation's CPU tensors)")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="seconds: start no new case after this long (0: no limit); the "
                             "cases left out are listed")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the table as Markdown (with device, date, command)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timing per shape and mode (default 3)")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=500)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG",
                        help="instead of the canonical shapes, sweep the hidden size and the "
                             "batch and draw speedup curves (needs matplotlib)")
    parser.add_argument("--group", choices=GROUPS,
                        help="instead of the canonical shapes: stepwise (GRUCell, and GRU at "
                             "T=1/2/4, with the weight floor), sweep (T x N x H grid, nn.GRU vs "
                             "gru_native), generate (word-language-model generation loop), "
                             "all-stepwise (stepwise, then generate)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: shrink the --group grids (N 1,8; H 64; T 1,2) and "
                             "generate 10 tokens per round")
    parser.add_argument("--batches", help="comma-separated N for --group stepwise/sweep "
                                          "(default 1,8,64)")
    parser.add_argument("--hiddens", help="comma-separated H (= C) for --group stepwise/sweep "
                                          "(default 64,256,1024)")
    parser.add_argument("--seq-lens", help="comma-separated T for --group stepwise's GRU rows "
                                           "(default 1,2,4) or --group sweep (default 1,2,8,64)")
    parser.add_argument("--tokens", type=int,
                        help="tokens generated per timed round, --group generate (default 50)")
    args = parser.parse_args(argv)
    if args.group and args.plot:
        parser.error("--group and --plot are exclusive")
    if args.group:
        return run_group(args)
    if args.plot:
        return sweep(args)

    dtype = getattr(torch, args.dtype)
    if args.grid == "gpu":
        Ns = [int(v) for v in (args.batches or "1,8,64,256").split(",")]
        Hs = [int(v) for v in (args.hiddens or "256,512,1024").split(",")]
        shapes = [Shape(f"T{t}-B{n}-H{h}-L{l}-{'bi' if bi else 'uni'}", t, n, h, h, l, bi)
                  for t in (int(v) for v in args.steps.split(","))
                  for n in Ns for h in Hs
                  for l, bi in ((1, False), (2, True), (1, True), (2, False))]
    else:
        by_name = {s.name: s for s in ALL_SHAPES}
        unknown = [n for n in args.shapes.split(",") if n not in by_name]
        if unknown:
            parser.error(f"unknown shapes {unknown}; known: {list(by_name)}")
        shapes = [by_name[n] for n in args.shapes.split(",")]
    modes = args.modes.split(",")
    machine = start_run(args)
    global _FORCE_CUDA_PATHS
    _FORCE_CUDA_PATHS = args.cuda_paths
    rows = []
    started = time.perf_counter()
    skipped = []
    for shape in shapes:
        for mode in modes:
            if args.deadline and time.perf_counter() - started > args.deadline:
                skipped.append(f"{shape.name} {mode}")
                continue
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
    if skipped:
        print(f"# deadline ({args.deadline:g} s) passed: {len(skipped)} cases not run: "
              + ", ".join(skipped))
    if args.markdown:
        write_markdown(args.markdown, rows, machine, args, skipped)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                       "device": args.device, "dtype": args.dtype,
                       "torch": torch.__version__, "gru_native": gru_native.build_info(),
                       "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=2)
    return 0


def write_markdown(path: str, rows: List[dict], machine: str, args, skipped: List[str]) -> None:
    """The table of main()'s rows as Markdown: one row per (shape, mode), a column per
    implementation (median, and peer / gru_native in parentheses)."""
    names: List[str] = []
    for row in rows:
        names += [n for n in row["results"] if n not in names]
    lines = [f"### {args.device} {args.dtype} — {machine} — {time.strftime('%Y-%m-%d')}", "",
             f"Command: `python {' '.join(sys.argv)}` (torch {torch.__version__}"
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
                cells.append(_fmt_time(r["median_s"]))
            else:
                cells.append(f"{_fmt_time(r['median_s'])} ({r['median_s'] / ours:.2f}x)")
        lines.append(f"| {row['shape']} | {row['dims']} | {row['mode']} | " + " | ".join(cells)
                     + " |")
    if skipped:
        lines += ["", f"Not run (deadline {args.deadline:g} s): " + ", ".join(skipped)]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n\n")


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



# -- Step-wise groups: --group stepwise | sweep | generate | all-stepwise --------------------------

GROUPS = ("stepwise", "sweep", "generate", "all-stepwise")
CELL_REFERENCE = "nn.GRUCell"
FLOOR = "weight floor"
STEP_N = (1, 8, 64)
STEP_H = (64, 256, 1024)
STEP_T = (1, 2, 4)          # --group stepwise, GRU rows
GRID_T = (1, 2, 8, 64)      # --group sweep
QUICK_N, QUICK_H, QUICK_T = (1, 8), (64,), (1, 2)
GEN_VOCAB, GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, GEN_TOKENS = 10000, 650, 650, 2, 50
GEN_SEED = 1111  # word_language_model's default --seed


def _fmt_fine(seconds: float) -> str:
    """_fmt_time, with microseconds below 0.1 ms (step-wise calls are that short)."""
    return f"{seconds * 1e6:.1f}us" if seconds < 1e-4 else _fmt_time(seconds)


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


def _cell_runner(module: nn.Module, x: torch.Tensor, hx: torch.Tensor,
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
    case.fns[CELL_REFERENCE] = _cell_runner(ref, x, hx, mode)
    case.fns[OURS] = _cell_runner(ours, x, hx, mode)
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
                case = build_case(shape, mode, args.device, dtype, with_ort=shape.T == 1,
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
                cells.append(f"{name} {_fmt_fine(r['median_s'])}{ratio}")
            cells.append(f"floor {_fmt_fine(floor)} (ours = {ours / floor:.1f}x floor)")
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
                    case = build_case(shape, mode, args.device, dtype, with_ort=False, h0=True)
                    result = measure(case, args.device, args.budget, args.min_rounds,
                                     args.max_rounds)
                    ref, ours = result[REFERENCE]["median_s"], result[OURS]["median_s"]
                    points.append({"T": t, "N": n, "H": h, "mode": mode, "results": result,
                                   "speedup_vs_nn_gru": ref / ours})
                    print(f"[{len(points)}/{total}] T={t:<3} N={n:<3} H={h:<5} {mode:<9} "
                          f"nn.GRU {_fmt_fine(ref)}  gru_native {_fmt_fine(ours)}  "
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


class _WordLM(nn.Module):
    """PyTorch's examples/word_language_model RNNModel, GRU flavour, as generate.py runs it
    (eval: its dropouts are identities, so the GRU is built with dropout 0): Embedding ->
    GRU -> Linear decoder -> log_softmax over the vocabulary."""

    def __init__(self, device: str, dtype: torch.dtype):
        super().__init__()
        self.encoder = nn.Embedding(GEN_VOCAB, GEN_EMSIZE, device=device, dtype=dtype)
        self.rnn = nn.GRU(GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, dropout=0.0, device=device,
                          dtype=dtype)
        self.decoder = nn.Linear(GEN_HIDDEN, GEN_VOCAB, device=device, dtype=dtype)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # RNNModel.init_weights
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)


def _generation_loop(model: _WordLM, tokens: int, device: str, rnn_times: List[float],
                     words: List[torch.Tensor]) -> Callable[[], None]:
    """generate.py's loop: from a seeded random word and a zero hidden state, `tokens` calls of
    one word each, the hidden state carried, the next word sampled by
    torch.multinomial(output.squeeze().div(1.0).exp(), 1) from a generator seeded at every call
    (so every call, and both models, draw the same random numbers). Appends the time spent in
    the model.rnn calls (perf_counter around each, synchronised) to rnn_times; leaves the last
    call's words in words."""
    dtype = model.decoder.weight.dtype

    def run():
        gen = torch.Generator(device=device).manual_seed(GEN_SEED)
        inp = torch.randint(GEN_VOCAB, (1, 1), generator=gen, device=device)
        hidden = torch.zeros(GEN_LAYERS, 1, GEN_HIDDEN, device=device, dtype=dtype)
        in_rnn = 0.0
        sampled = []
        with torch.no_grad():
            for _ in range(tokens):
                emb = model.encoder(inp)
                _sync(device)
                start = time.perf_counter()
                output, hidden = model.rnn(emb, hidden)
                _sync(device)
                in_rnn += time.perf_counter() - start
                output = torch.log_softmax(model.decoder(output).view(-1, GEN_VOCAB), dim=1)
                word_idx = torch.multinomial(output.squeeze().div(1.0).exp(), 1,
                                             generator=gen)[0]
                inp.fill_(word_idx)
                sampled.append(word_idx)
        rnn_times.append(in_rnn)
        words[:] = sampled
    return run


def generate(args, dtype: torch.dtype) -> dict:
    """The generation loop with nn.GRU and with gru_native.GRU (the same model otherwise, the
    same weights), whole loop and the GRU's share, interleaved."""
    tokens = args.tokens or (10 if args.quick else GEN_TOKENS)
    torch.manual_seed(0)
    ref_model = _WordLM(args.device, dtype).eval()
    ours_model = copy.deepcopy(ref_model)
    ours_model.rnn = gru_native.GRU(GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, dropout=0.0,
                                    device=args.device, dtype=dtype)
    ours_model.rnn.load_state_dict(ref_model.rnn.state_dict())
    ours_model.eval()
    shape = Shape("generate", tokens, 1, GEN_EMSIZE, GEN_HIDDEN, GEN_LAYERS, False)
    case = Case(shape, "inference", modules={REFERENCE: ref_model, OURS: ours_model})
    rnn_times: Dict[str, List[float]] = {REFERENCE: [], OURS: []}
    words: Dict[str, List[torch.Tensor]] = {REFERENCE: [], OURS: []}
    for name, model in ((REFERENCE, ref_model), (OURS, ours_model)):
        case.fns[name] = _generation_loop(model, tokens, args.device, rnn_times[name],
                                          words[name])
    print(f"# generate: word_language_model generation, Embedding({GEN_VOCAB}, {GEN_EMSIZE}) "
          f"-> GRU({GEN_EMSIZE}, {GEN_HIDDEN}, {GEN_LAYERS} layers) -> Linear({GEN_HIDDEN}, "
          f"{GEN_VOCAB}) -> log_softmax -> multinomial; N=1, one token per call, hidden carried, "
          f"eval, {tokens} tokens per timed round")
    result = measure(case, args.device, args.budget, args.min_rounds, args.max_rounds)
    rounds = result[OURS]["rounds"]
    rnn = {}
    for name, times in rnn_times.items():
        timed = times[-rounds:]  # measure() runs 2 warm-up calls first
        rnn[name] = {"median_s": statistics.median(timed), "min_s": min(timed),
                     "rounds": len(timed)}
    loop_ratio = result[REFERENCE]["median_s"] / result[OURS]["median_s"]
    rnn_ratio = rnn[REFERENCE]["median_s"] / rnn[OURS]["median_s"]

    def cells(r):
        return (f"{REFERENCE} {_fmt_fine(r[REFERENCE]['median_s'])} "
                f"({r[REFERENCE]['median_s'] / r[OURS]['median_s']:.2f}x) | "
                f"{OURS} {_fmt_fine(r[OURS]['median_s'])}")
    share = {n: rnn[n]["median_s"] / result[n]["median_s"] for n in (REFERENCE, OURS)}
    print(f"{f'generate, whole loop ({tokens} tokens)':<36} | {cells(result)} | rounds {rounds}")
    print(f"{'generate, GRU share (rnn calls only)':<36} | {cells(rnn)} | of the loop: "
          f"{REFERENCE} {share[REFERENCE]:.0%}, {OURS} {share[OURS]:.0%}")
    per_token = {n: result[n]["median_s"] / tokens for n in (REFERENCE, OURS)}
    print(f"# per token: {REFERENCE} {_fmt_fine(per_token[REFERENCE])}, "
          f"{OURS} {_fmt_fine(per_token[OURS])}")
    same = len(words[REFERENCE]) == len(words[OURS]) and all(
        bool(a == b) for a, b in zip(words[REFERENCE], words[OURS]))
    if same:
        print(f"# same sampled words from both models: yes ({tokens})")
    else:
        first = next(i for i, (a, b) in enumerate(zip(words[REFERENCE], words[OURS]))
                     if bool(a != b))
        print(f"# same sampled words from both models: no, first difference at word {first} "
              "(rounding moved a sample across a boundary; timings still compare like work)")
    return {"tokens": tokens, "loop": result, "rnn": rnn,
            "loop_speedup_vs_nn_gru": loop_ratio, "rnn_speedup_vs_nn_gru": rnn_ratio,
            "rnn_share_of_loop": share, "same_words": same}


def run_group(args) -> int:
    """--group: the header lines of main(), the group(s), --json."""
    dtype = getattr(torch, args.dtype)
    machine = start_run(args)
    payload = {}
    if args.group in ("stepwise", "all-stepwise"):
        payload["stepwise"] = stepwise(args, dtype)
    if args.group == "sweep":
        payload["sweep"] = grid_sweep(args, dtype)
    if args.group in ("generate", "all-stepwise"):
        payload["generate"] = generate(args, dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                       "device": args.device, "dtype": args.dtype,
                       "torch": torch.__version__, "gru_native": gru_native.build_info(),
                       "command": "python " + " ".join(sys.argv), "group": args.group,
                       **payload}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
