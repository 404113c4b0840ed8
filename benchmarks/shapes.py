"""The shapes bench.py times: the canonical dense shapes, the packed cases, the --grid gpu grid.

A shape is (T, N, C, H, layers, direction), plus the sequence lengths for packed input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

MODES = ("inference", "training")


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

GPU_BATCHES = "1,8,64,256"    # --grid gpu's defaults for --batches and --hiddens
GPU_HIDDENS = "256,512,1024"
# --grid gpu's (layers, bidirectional) at every T, N and H, in this order.
GPU_LAYOUTS = ((1, False), (2, True), (1, True), (2, False))


def gpu_grid(steps: str, batches: Optional[str], hiddens: Optional[str]) -> List[Shape]:
    """--grid gpu: every T of steps, then N, then H (C = H), then GPU_LAYOUTS; the arguments are
    the comma-separated option strings (batches and hiddens None for the defaults)."""
    Ns = [int(v) for v in (batches or GPU_BATCHES).split(",")]
    Hs = [int(v) for v in (hiddens or GPU_HIDDENS).split(",")]
    return [Shape(f"T{t}-B{n}-H{h}-L{l}-{'bi' if bi else 'uni'}", t, n, h, h, l, bi)
            for t in (int(v) for v in steps.split(","))
            for n in Ns for h in Hs
            for l, bi in GPU_LAYOUTS]


def by_names(names: str) -> List[Shape]:
    """The shapes of ALL_SHAPES named in names (comma-separated), in that order; ValueError
    naming the unknown ones and the known ones."""
    known = {s.name: s for s in ALL_SHAPES}
    unknown = [n for n in names.split(",") if n not in known]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {list(known)}")
    return [known[n] for n in names.split(",")]
