"""Blocks shared by the AR and NAR models: positions, (adaptive) layer norm, attention, the stack.

In: embedded sequences `(B, T, d)` and a boolean attention mask `(B, 1, T, T_keys)` (True = may
attend). Out: hidden states `(B, T, d)` and each layer's keys/values (the AR model keeps them as
its KV cache). Pre-norm Transformer blocks (LayerNorm before attention and before the FFN, one more
at the end), GELU FFN, attention through `F.scaled_dot_product_attention`.

Masks never leave a query row empty: every position may always attend to itself (see
`attention_mask`), so a padded query row yields finite garbage, never NaN, while real rows never
see padded keys (a padded position is never a real query's key).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, H, T, d_head) each


class SinePositions(nn.Module):
    """Adds fixed sinusoidal positions, times a learned scale (VALL-E style), to a sequence.

    Sinusoidal rather than learned: nothing to learn per position, so long audio positions that
    are rare in training are still well defined. Text and audio each own one of these and each
    count their positions from 0, so the audio positions do not depend on the text's length.
    """

    def __init__(self, d_model: int, max_len: int, what: str):
        super().__init__()
        self.max_len, self.what = max_len, what
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)  # rebuilt, never checkpointed
        self.alpha = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:  # x (B, T, d)
        end = start + x.shape[1]
        if end > self.max_len:
            raise ValueError(
                f"{self.what} of {end} positions exceeds the model's limit of {self.max_len}; "
                f"trim the input or raise max_{self.what.replace(' ', '_')} in ModelConfig"
            )
        return x + self.alpha * self.pe[start:end].to(x.dtype)


class Norm(nn.Module):
    """LayerNorm; with `n_cond > 0` an adaptive LayerNorm: `(1 + a_c) * LN(x) + b_c` for condition c.

    The NAR model conditions on the codebook being predicted this way (as VALL-E does): every norm
    of every layer sees the condition, at the cost of 2 x d parameters per condition per norm.
    a_c, b_c start at 0, so an untrained AdaLN is a plain LayerNorm.
    """

    def __init__(self, d_model: int, n_cond: int = 0):
        super().__init__()
        self.n_cond = n_cond
        self.norm = nn.LayerNorm(d_model, elementwise_affine=n_cond == 0)
        if n_cond:
            self.scale_shift = nn.Embedding(n_cond, 2 * d_model)
            nn.init.zeros_(self.scale_shift.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # x (B, T, d), cond (B,)
        x = self.norm(x)
        if not self.n_cond:
            return x
        scale, shift = self.scale_shift(cond)[:, None, :].chunk(2, dim=-1)  # (B, 1, d) each
        return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | None = None):
        B, T, d = x.shape  # x (B, T, d); mask (B, 1, T, T_past + T) or None (attend to everything)
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T_past + T, dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, dh)
        y = y.transpose(1, 2).reshape(B, T, d)
        return self.resid_drop(self.out(y)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return self.drop(self.out(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, n_cond: int = 0):
        super().__init__()
        self.norm1, self.attn = Norm(cfg.d_model, n_cond), SelfAttention(cfg)
        self.norm2, self.ff = Norm(cfg.d_model, n_cond), FeedForward(cfg)

    def forward(self, x, mask, cond=None, past: KV | None = None):  # x (B, T, d)
        a, kv = self.attn(self.norm1(x, cond), mask, past)
        x = x + a
        x = x + self.ff(self.norm2(x, cond))
        return x, kv


class Transformer(nn.Module):
    """n_layers pre-norm blocks and a final norm; returns hidden states and each layer's keys/values."""

    def __init__(self, cfg: ModelConfig, n_cond: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, n_cond) for _ in range(cfg.n_layers))
        self.norm = Norm(cfg.d_model, n_cond)
        for name, p in self.named_parameters():  # nanoGPT init: N(0, 0.02), residual outputs scaled down
            if name.endswith(("qkv.weight", "up.weight")):
                nn.init.normal_(p, std=0.02)
            elif name.endswith(("attn.out.weight", "ff.out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))
            elif name.endswith(("qkv.bias", "up.bias", "out.bias")):
                nn.init.zeros_(p)

    def forward(self, x, mask, cond=None, past: list[KV] | None = None):  # x (B, T, d)
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, cond, None if past is None else past[i])
            presents.append(kv)
        return self.norm(x, cond), presents  # (B, T, d), n_layers x KV


def attention_mask(key_valid: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, T, T): query i may attend key j iff key j is real and `allowed[i, j]`.

    key_valid (B, T) marks real (non-padding) positions; allowed (T, T) is the structure (causal,
    prefix-LM, ...) or None for bidirectional. The diagonal is always allowed so that no row is
    empty (an all-False row makes SDPA return NaN); it changes nothing for real queries, whose own
    position is a real key anyway.
    """
    B, T = key_valid.shape
    mask = key_valid[:, None, :].expand(B, T, T)  # (B, Tq, Tk)
    if allowed is not None:
        mask = mask & allowed[None]
    mask = mask | torch.eye(T, dtype=torch.bool, device=key_valid.device)[None]
    return mask[:, None]  # (B, 1, T, T)


def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True at positions < length."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def train_flops(cfg: ModelConfig, matmul_params: int, seq_lens) -> float:
    """Forward+backward FLOPs of a batch whose sequences (text + audio positions) have lengths
    `seq_lens`: per position 6 x (parameters used in matmuls), and per sequence of length L the
    attention scores and weighted values, 2 x 2 x d x L^2 per layer forward, x3 with the backward
    pass (as nanoGPT/PaLM count it). Real lengths, not padded ones: padding is waste, not work.
    Attention is counted over the full L x L square, since the explicit mask makes SDPA compute
    the masked half too."""
    lens = [float(x) for x in seq_lens.tolist()]
    return 6.0 * matmul_params * sum(lens) + 12.0 * cfg.n_layers * cfg.d_model * sum(x * x for x in lens)


def target_stats(correct, targets, real, bins: int, groups: int = 1, group=None) -> dict:
    """Loss bookkeeping without a host sync: detached device tensors "correct", "tokens" (real
    targets) and "histogram" (groups, bins): how often each real target occurs, per group (the
    NAR's stage; one group for the AR). Its per-group maximum is the majority-code baseline."""
    index = targets if group is None else group * bins + targets
    index = torch.where(real, index, groups * bins)  # ignored targets land in a spare bin
    histogram = torch.zeros(groups * bins + 1, dtype=torch.long, device=targets.device)
    histogram.index_add_(0, index, torch.ones_like(index))
    return {"correct": correct.detach(), "tokens": real.sum().detach(), "histogram": histogram[:-1].view(groups, bins)}
