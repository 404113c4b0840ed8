"""A character-level language model, trained twice from the same initialisation: once with
torch.nn.GRU, once with gru_native.GRU. Prints the time per step of both, checks that the two loss
curves coincide, and draws them (``--plot``, needs matplotlib).

    python -m gru_native.examples.char_lm                 # 200 steps
    python -m gru_native.examples.char_lm --steps 10 --plot losses.png

The text (examples/data/public_domain.txt) is public domain: the Declaration of Independence,
the Gettysburg Address and sixteen of Shakespeare's Sonnets. The model: embedding -> 2-layer GRU
(dropout 0.2 between the layers) -> linear, Adam, batches of random windows. Both runs draw the
same batches and, since gru_native draws its dropout masks from torch's generator exactly as
nn.GRU does on the CPU, the same masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

import gru_native

DATA = Path(__file__).with_name("data") / "public_domain.txt"


class CharLM(nn.Module):
    def __init__(self, vocab: int, gru_cls, embed: int = 48, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = gru_cls(embed, hidden, layers, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, N] -> logits [T, N, vocab]
        out, _ = self.gru(self.embed(x))
        return self.head(out)


def load_text():
    text = DATA.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), vocab


def train(gru_cls, data: torch.Tensor, vocab: int, init_state: dict, steps: int, seq_len: int,
          batch: int, seed: int):
    """Trains one model; returns (losses, seconds per step)."""
    model = CharLM(vocab, gru_cls)
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    batches = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    losses, times = [], []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=batches)
        window = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()], 1)  # [T+1, N]
        start = time.perf_counter()
        opt.zero_grad()
        logits = model(window[:-1])
        loss = loss_fn(logits.reshape(-1, vocab), window[1:].reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, times


def run(steps: int = 200, seq_len: int = 64, batch: int = 32, seed: int = 0,
        plot: Optional[str] = None, tolerance: float = 1e-4) -> int:
    data, vocab = load_text()
    torch.manual_seed(seed)
    init_state = CharLM(len(vocab), nn.GRU).state_dict()
    curves = {}
    for name, cls in (("nn.GRU", nn.GRU), ("gru_native.GRU", gru_native.GRU)):
        curves[name] = train(cls, data, len(vocab), init_state, steps, seq_len, batch, seed)
    (ref, ref_t), (ours, ours_t) = curves["nn.GRU"], curves["gru_native.GRU"]
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, ref))
    t_ref, t_ours = statistics.median(ref_t), statistics.median(ours_t)
    print(f"{len(data)} characters, vocabulary {len(vocab)}; {steps} steps of {batch} windows "
          f"of {seq_len}")
    print(f"time per step (median): nn.GRU {t_ref * 1e3:.1f} ms, gru_native.GRU "
          f"{t_ours * 1e3:.1f} ms ({t_ref / t_ours:.2f}x)")
    print(f"loss: first {ref[0]:.4f} / {ours[0]:.4f}, last {ref[-1]:.4f} / {ours[-1]:.4f} "
          f"(nn.GRU / gru_native); largest relative difference over the run {worst:.2e}")
    if plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); no plot written")
        else:
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot(ref, label=f"torch.nn.GRU ({t_ref * 1e3:.1f} ms/step)", linewidth=2.5,
                    alpha=0.6)
            ax.plot(ours, "--", label=f"gru_native.GRU ({t_ours * 1e3:.1f} ms/step)",
                    linewidth=1.2)
            ax.set_xlabel("step")
            ax.set_ylabel("cross-entropy")
            ax.set_title("Character LM, same initialisation, same batches")
            ax.legend()
            fig.tight_layout()
            fig.savefig(plot, dpi=120)
            print(f"wrote {plot}")
    if worst > tolerance:
        print(f"FAIL: the loss curves differ by more than {tolerance:g}")
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PNG", help="draw both loss curves (matplotlib)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative loss difference accepted (default 1e-4)")
    args = parser.parse_args(argv)
    return run(args.steps, args.seq_len, args.batch, args.seed, args.plot, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
