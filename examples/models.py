"""The example models, written once against the PyTorch nn API.

`define_models(nn, F)` builds the classes over any namespace with that API:
`tracetorch.nn` (the classes this module exports: `from examples.models import
MLPResNet`) or `torch.nn` (which the benchmark uses to time PyTorch on the very
same model code).

- `MLPResNet`: the residual MLP of the design notes (the demo's model, W5).
- `TinyGPT`: a small decoder-only transformer (embedding, layer norm, causal
  attention, GELU MLP), the W6 benchmark model.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace


def define_models(nn, F) -> SimpleNamespace:
    """The model classes, defined over the `nn` and `nn.functional` modules given."""

    class ResidualBlock(nn.Module):
        """relu(x + norm(W2 drop(relu(norm(W1 x)))))  — the block of the design notes."""

        def __init__(self, dim: int, hidden: int, drop: float):
            super().__init__()
            self.fn = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(drop),
                                    nn.Linear(hidden, dim), nn.BatchNorm1d(dim))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.fn(x))

    class MLPResNet(nn.Module):
        def __init__(self, dim=784, hidden=100, blocks=3, classes=10, drop=0.1):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                     *[ResidualBlock(hidden, hidden // 2, drop) for _ in range(blocks)],
                                     nn.Linear(hidden, classes))

        def forward(self, x):
            return self.net(x)

    class CausalSelfAttention(nn.Module):
        def __init__(self, width: int, heads: int):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            batch, seq, width = x.shape
            q, k, v = self.qkv(x).split(width, dim=2)
            shape = (batch, seq, self.heads, width // self.heads)
            q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(batch, seq, width))

    class GPTBlock(nn.Module):
        """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

        def __init__(self, width: int, heads: int):
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.attn = CausalSelfAttention(width, heads)
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class TinyGPT(nn.Module):
        """Token + learned position embeddings, `layers` blocks, final norm, vocabulary head."""

        def __init__(self, vocab=256, seq=64, width=128, heads=4, layers=2):
            super().__init__()
            self.tok = nn.Embedding(vocab, width)
            self.pos = nn.Embedding(seq, width)
            self.blocks = nn.Sequential(*[GPTBlock(width, heads) for _ in range(layers)])
            self.ln = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab)

        def forward(self, idx, positions):
            return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(positions))))

    return SimpleNamespace(ResidualBlock=ResidualBlock, MLPResNet=MLPResNet,
                           CausalSelfAttention=CausalSelfAttention, GPTBlock=GPTBlock, TinyGPT=TinyGPT)


@functools.cache
def tracetorch_models() -> SimpleNamespace:
    """The classes over tracetorch.nn (built once, on first use, so importing this module stays cheap)."""
    import tracetorch.nn as nn
    import tracetorch.nn.functional as F
    return define_models(nn, F)


def __getattr__(name):
    # `from examples.models import MLPResNet` gives the tracetorch class.
    try:
        return getattr(tracetorch_models(), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
