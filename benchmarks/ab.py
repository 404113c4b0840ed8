"""Before and after: gru_native from two source trees, each built in place, timed side by side.

Two builds of the extension cannot share a process (both register the gru_native op namespace),
so each tree gets a worker process (PYTHONPATH=<tree>), and this one interleaves them: per round
one timed call in A, then one in B, on the same shapes, weights and inputs (seeded alike), after
a warm-up; the medians and B's speedup (A median / B median) per case. nn.GRU runs in both
workers' rounds too, as a check that the two processes see the same machine (its A/B ratio
should be near 1).

    python benchmarks/ab.py BEFORE_TREE AFTER_TREE [--cases canonical,stepwise] [--rounds 15]
                            [--clock cpu] [--cpu 0]

Each tree must hold a gru_native/_C built for this Python and torch (`python setup.py
build_ext --inplace` in it). Cases: the canonical dense shapes (inference, training) and the
step-wise grid (GRUCell and GRU at T=1, N 1,8,64 x H 64,256,1024, from a carried state); with
--cases rows, products of 16-48 rows (GRUCell and GRU at T=1, N 16-48, H 256 and 1024; GRU at
T=2, 4 with N=8); with --cases lowp, the quantized modules (int8 and bfloat16 weights, inference) at the low-precision
shapes, nn.GRU in float32 as the control; with --cases bf16, the canonical shapes from small up in
bfloat16 (model.to(torch.bfloat16)), inference and training, and GRUCell and GRU at T=1 (N 1, 8 x
H 256, 1024) from a carried state, nn.GRU in bfloat16 as the control; with --cases gemm, float32
products through the backend's GEMM (_C._cpu_gemm) at the canonical phases' shapes, torch.mm as
the control.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

CANONICAL = [("seed", 9, 3, 5, 5, 1, False), ("seed-2L-bi", 9, 3, 5, 5, 2, True),
             ("small", 100, 32, 64, 64, 1, False), ("medium-2L-bi", 100, 32, 256, 256, 2, True),
             ("large", 50, 64, 512, 1024, 1, False), ("latency-B1", 200, 1, 256, 256, 1, False)]
STEP_N, STEP_H = (1, 8, 64), (64, 256, 1024)
# --cases lowp: the quantized modules (gru_native.quantize, int8 and bfloat16 weights), inference,
# at bench.py --group lowp's shapes (T, N, C, H, layers, bi; "cell": a GRUCell).
LOWP = [("medium-2L-bi", 100, 32, 256, 256, 2, True), ("large", 50, 64, 512, 1024, 1, False),
        ("latency-B1", 200, 1, 256, 256, 1, False), ("stream-1024-2L", 1, 1, 1024, 1024, 2, False),
        ("stream-256", 1, 1, 256, 256, 1, False), ("cell-256", 1, 1, 256, 256, 1, False),
        ("cell-1024", 1, 1, 1024, 1024, 1, False), ("cell-256 N=8", 1, 8, 256, 256, 1, False),
        ("T=1 N=64 H=1024", 1, 64, 1024, 1024, 1, False)]

# --cases rows: products of a few dozen rows (16-48: the in-place and dot-product routes' limits),
# inference from a carried state: GRUCell and GRU at T=1 by N, and GRU at T=2, 4 with N=8 (input
# projections of 16 and 32 rows, recurrences of 8).
ROWS_N, ROWS_H = (16, 24, 32, 48), (256, 1024)

# --cases gemm: float32 products C[M, N] = A[M, K] B[K, N] through the backend's GEMM
# (_C._cpu_gemm), torch.mm as the control: "xwt", B = W^T of a row-major W [N, K] (the input
# projections, x W_ih^T); "plain", B row-major (d(input) = dG W_ih); "atb", A = G^T of a row-major
# G [K, M] (the weight gradients, dW = dG^T x). At the canonical shapes' phases, and at a few
# hundred rows (short sequences).
GEMMS = [("xwt", 3200, 256, 768), ("xwt", 3200, 512, 768), ("xwt", 3200, 512, 3072),
         ("xwt", 200, 256, 768), ("xwt", 256, 1024, 3072), ("xwt", 800, 1024, 3072),
         ("plain", 3200, 768, 256), ("plain", 3200, 3072, 512), ("atb", 768, 3200, 256),
         ("atb", 3072, 3200, 512)]


def cases(groups):
    out = []
    if "canonical" in groups:
        for name, T, N, C, H, L, bi in CANONICAL:
            for mode in ("inference", "training"):
                out.append(dict(name=name, kind="gru", T=T, N=N, C=C, H=H, L=L, bi=bi,
                                mode=mode, h0=False))
    if "stepwise" in groups:
        for kind in ("cell", "gru"):
            for N in STEP_N:
                for H in STEP_H:
                    for mode in ("inference", "training"):
                        out.append(dict(name=f"{kind} N={N} H={H}" + (" T=1" if kind == "gru"
                                                                      else ""),
                                        kind=kind, T=1, N=N, C=H, H=H, L=1, bi=False, mode=mode,
                                        h0=True))
    if "rows" in groups:
        for H in ROWS_H:
            for kind in ("cell", "gru"):
                for N in ROWS_N:
                    out.append(dict(name=f"{kind} N={N} H={H}" + (" T=1" if kind == "gru" else ""),
                                    kind=kind, T=1, N=N, C=H, H=H, L=1, bi=False,
                                    mode="inference", h0=True))
            for T in (2, 4):
                out.append(dict(name=f"gru N=8 H={H} T={T}", kind="gru", T=T, N=8, C=H, H=H, L=1,
                                bi=False, mode="inference", h0=True))
    if "bf16" in groups:
        for name, T, N, C, H, L, bi in CANONICAL[2:]:
            for mode in ("inference", "training"):
                out.append(dict(name=f"bf16 {name}", kind="gru", T=T, N=N, C=C, H=H, L=L, bi=bi,
                                mode=mode, h0=False, dtype="bfloat16"))
        for kind in ("cell", "gru"):  # step-wise, from a carried state
            for N in (1, 8):
                for H in (256, 1024):
                    out.append(dict(name=f"bf16 {kind} N={N} H={H}" + (" T=1" if kind == "gru"
                                                                        else ""),
                                    kind=kind, T=1, N=N, C=H, H=H, L=1, bi=False,
                                    mode="inference", h0=True, dtype="bfloat16"))
    if "gemm" in groups:
        for form, M, K, N in GEMMS:
            out.append(dict(name=f"gemm {form} {M}x{K}x{N}", kind="gemm", form=form, M=M, K=K,
                            N=N, mode="inference"))
    if "lowp" in groups:
        for quant in ("int8", "bf16"):
            for name, T, N, C, H, L, bi in LOWP:
                out.append(dict(name=f"{quant} {name}", kind="cell" if "cell" in name else "gru",
                                T=T, N=N, C=C, H=H, L=L, bi=bi, mode="inference", h0=True,
                                quant=quant))
    return out


# -- the worker: runs in each tree's process ------------------------------------------------------

def _runner(spec, impl):
    import torch

    import gru_native

    torch.manual_seed(0)
    if spec["kind"] == "gemm":
        M, K, N = spec["M"], spec["K"], spec["N"]
        a = torch.randn(K, M).t() if spec["form"] == "atb" else torch.randn(M, K)
        b = torch.randn(N, K).t() if spec["form"] == "xwt" else torch.randn(K, N)
        c = torch.empty(M, N)
        if impl == "nn":
            return lambda: torch.mm(a, b, out=c)
        from gru_native import _C
        return lambda: _C._cpu_gemm(a, b, c)
    if spec["kind"] == "cell":
        ref = torch.nn.GRUCell(spec["C"], spec["H"])
        mod = ref if impl == "nn" else gru_native.GRUCell(spec["C"], spec["H"])
        x = torch.randn(spec["N"], spec["C"])
        args = (x, torch.randn(spec["N"], spec["H"]))
    else:
        D = 2 if spec["bi"] else 1
        ref = torch.nn.GRU(spec["C"], spec["H"], spec["L"], bidirectional=spec["bi"])
        mod = ref if impl == "nn" else gru_native.GRU(spec["C"], spec["H"], spec["L"],
                                                      bidirectional=spec["bi"])
        x = torch.randn(spec["T"], spec["N"], spec["C"])
        args = (x,) + ((torch.randn(spec["L"] * D, spec["N"], spec["H"]),) if spec["h0"]
                       else ())
    if mod is not ref:
        mod.load_state_dict(ref.state_dict())
        if spec.get("quant"):
            mod = gru_native.quantize(mod, torch.qint8 if spec["quant"] == "int8"
                                      else torch.bfloat16)
    if spec.get("dtype"):  # the module and inputs in that dtype (model.to(dtype))
        dtype = getattr(torch, spec["dtype"])
        mod = mod.to(dtype)
        x = x.to(dtype)
        args = tuple(a.to(dtype) for a in args)
    if spec["mode"] == "inference":
        def run():
            with torch.no_grad():
                mod(*args)
        return run
    xg = x.detach().clone().requires_grad_()
    targs = (xg,) + args[1:]

    def run():
        out = mod(*targs)
        loss = out.sum() if isinstance(out, torch.Tensor) else out[0].sum() + out[1].sum()
        loss.backward()
    return run


def worker(clock):
    runners = {}
    for line in sys.stdin:
        msg = json.loads(line)
        key = (json.dumps(msg["spec"], sort_keys=True), msg["impl"])
        if key not in runners:
            runners[key] = _runner(msg["spec"], msg["impl"])
        fn = runners[key]
        times = []
        for _ in range(msg["calls"]):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        print(json.dumps(times), flush=True)


# -- the controller -------------------------------------------------------------------------------

class Worker:
    def __init__(self, tree, clock, cpu=None):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                      clock],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=os.path.abspath(tree), preexec_fn=pin)

    def time(self, spec, impl, calls):
        self.proc.stdin.write(json.dumps({"spec": spec, "impl": impl, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a worker died")
        return json.loads(line)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--cases", default="canonical,stepwise")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds per case and implementation, at most (rounds shrink to fit)")
    p.add_argument("--match", default="",
                   help="only the cases whose name contains this text (e.g. 'H=1024'); "
                        "several, separated by '|', for any of them")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time, or each worker's CPU time (steadier on a shared machine)")
    p.add_argument("--cpu", type=int, default=None,
                   help="run both workers on this one CPU (with OMP_NUM_THREADS=1): on a shared "
                        "virtual machine the CPUs can differ in speed by tens of percent, which "
                        "the nn.GRU control then shows")
    args = p.parse_args()
    a, b = Worker(args.before, args.clock, args.cpu), Worker(args.after, args.clock, args.cpu)
    print(f"# A = {args.before}, B = {args.after}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"command: python {' '.join(sys.argv)}")
    print(f"{'case':<24} {'mode':<9} | {'A ours':>10} {'B ours':>10} {'A/B':>6} | "
          f"{'nn.GRU A/B':>10}")
    ratios = []
    for spec in cases(args.cases.split(",")):
        if not any(m in spec["name"] for m in args.match.split("|")):
            continue
        for w in (a, b):  # warm-up, and the size of a call
            w.time(spec, "nn", 2)
            first = w.time(spec, "ours", 2)[-1]
        rounds = max(5, min(args.rounds, int(args.budget / max(first, 1e-6))))
        calls = 1 if first > 1e-3 else max(1, int(1e-3 / max(first, 1e-7)))
        samples = {k: [] for k in ("a", "b", "na", "nb")}
        for _ in range(rounds):
            samples["a"].append(statistics.median(a.time(spec, "ours", calls)))
            samples["b"].append(statistics.median(b.time(spec, "ours", calls)))
            samples["na"].append(statistics.median(a.time(spec, "nn", calls)))
            samples["nb"].append(statistics.median(b.time(spec, "nn", calls)))
        m = {k: statistics.median(v) for k, v in samples.items()}
        ratios.append(m["a"] / m["b"])
        print(f"{spec['name']:<24} {spec['mode']:<9} | {m['a'] * 1e3:>8.3f}ms {m['b'] * 1e3:>8.3f}ms "
              f"{m['a'] / m['b']:>6.2f} | {m['na'] / m['nb']:>10.2f}", flush=True)
    if not ratios:
        print(f"# no case matched {args.match!r}")
        return 1
    print(f"# B over A: geometric mean {statistics.geometric_mean(ratios):.3f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f} over {len(ratios)} cases")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(CLOCKS[sys.argv[2]])
    else:
        sys.exit(main())
