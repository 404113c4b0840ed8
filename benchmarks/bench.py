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
    python benchmarks/bench.py --group phases         # per-phase rates beside the best GEMMs
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
weights otherwise), and the GRU's share (only the rnn calls, timed inside the loop). phases
(benchmarks/phases.py; --shapes picks the dense shapes): per phase of a training step, its time
and rate in gru_native's op beside the rate of the same products through ATen's mm, gru_native's
GEMM and (when installed) OpenVINO's oneDNN MatMul, and op / best.
"""

# The modules that do the work, each with one job: shapes.py (the shapes), harness.py (cases,
# runners, interleaved medians, the header, Markdown and JSON), peers.py (optional peers such as
# ONNX Runtime, OpenVINO), canonical.py (the table of shapes), plots.py (--plot), stepwise.py
# (--group stepwise and sweep), generate.py (--group generate), phases.py (--group phases). This
# file is the command line only.

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

import canonical
import plots
from generate import generate
from harness import start_run, write_json
from phases import phases
from shapes import ALL_SHAPES, MODES, by_names, gpu_grid
from stepwise import grid_sweep, stepwise

# --group NAME runs these parts, in this order; each part's result goes into the JSON under its
# own name. A new group is one entry here and, for a new part, one in PARTS.
GROUPS = {
    "stepwise": ("stepwise",),
    "sweep": ("sweep",),
    "generate": ("generate",),
    "all-stepwise": ("stepwise", "generate"),
    "phases": ("phases",),
}
PARTS = {"stepwise": stepwise, "sweep": grid_sweep, "generate": generate, "phases": phases}


def run_group(args) -> int:
    """--group: the header lines, the group's parts, --json."""
    dtype = getattr(torch, args.dtype)
    machine = start_run(args)
    payload = {part: PARTS[part](args, dtype) for part in GROUPS[args.group]}
    if args.json:
        write_json(args.json, machine, args, {"group": args.group, **payload})
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(s.name for s in ALL_SHAPES),
                   help="comma-separated shape names (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help="inference,training")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "float16", "bfloat16"],
                   help="half types on CUDA only")
    p.add_argument("--grid", choices=["canonical", "gpu"], default="canonical",
                   help="gpu: batch (--batches, default 1,8,64,256) x H (--hiddens, "
                        "default 256,512,1024) x 1-2 layers x uni/bi (C=H) at each of "
                        "--steps")
    p.add_argument("--steps", default="200",
                   help="comma-separated sequence lengths for --grid gpu (default 200)")
    p.add_argument("--cuda-paths", action="store_true",
                   help="time each CUDA recurrence path forced (GRU_NATIVE_CUDA_PATH) "
                        "beside the automatic choice on any device (on by default on "
                        "cuda; for the CUDA emulation's CPU tensors)")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="seconds: start no new case after this long (0: no limit); the "
                        "cases left out are listed")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write the table as Markdown (with device, date, command)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds of timing per shape and mode (default 3)")
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=500)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PNG",
                   help="instead of the canonical shapes, sweep the hidden size and the "
                        "batch and draw speedup curves (needs matplotlib)")
    p.add_argument("--group", choices=tuple(GROUPS),
                   help="instead of the canonical shapes: stepwise (GRUCell, and GRU at "
                        "T=1/2/4, with the weight floor), sweep (T x N x H grid, nn.GRU vs "
                        "gru_native), generate (word-language-model generation loop), "
                        "all-stepwise (stepwise, then generate), phases (per-phase rates "
                        "beside the best GEMMs for the same products)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: shrink the --group grids (N 1,8; H 64; T 1,2) and "
                        "generate 10 tokens per round")
    p.add_argument("--batches", help="comma-separated N for --group stepwise/sweep "
                                     "(default 1,8,64)")
    p.add_argument("--hiddens", help="comma-separated H (= C) for --group stepwise/sweep "
                                     "(default 64,256,1024)")
    p.add_argument("--seq-lens", help="comma-separated T for --group stepwise's GRU rows "
                                      "(default 1,2,4) or --group sweep (default 1,2,8,64)")
    p.add_argument("--tokens", type=int,
                   help="tokens generated per timed round, --group generate (default 50)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.group and args.plot:
        cli.error("--group and --plot are exclusive")
    if args.group:
        return run_group(args)
    if args.plot:
        return plots.plot_speedup(args)
    if args.grid == "gpu":
        shapes = gpu_grid(args.steps, args.batches, args.hiddens)
    else:
        try:
            shapes = by_names(args.shapes)
        except ValueError as e:
            cli.error(str(e))
    return canonical.run_shapes(args, shapes)


if __name__ == "__main__":
    sys.exit(main())
