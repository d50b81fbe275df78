"""The autoregressive (AR) model: BPE text -> codebook-1 codes, VALL-E 2 grouped code modelling.

In: text (B, S) BPE ids (pad 0) with text_lens (B,), codebook-1 codes (B, T) with code_lens (B,).
Out: next-group logits (B, N, G, V + 1), N = ceil(T / G) + 1, V = codebook_size.

One decoder-only Transformer over [text ; audio groups] with a prefix-LM mask: text positions
attend to all real text (bidirectional), audio positions attend to all real text and to audio
positions up to their own (causal). Text and audio each count positions from 0 (two sinusoidal
tables), so padding text to S leaves a gap the mask hides, and audio positions do not depend on S.

Audio vocabulary: codes 0..V-1, EOS = V, PAD = V + 1. With group size G (VALL-E 2; G = 1 is VALL-E)
one position holds G consecutive codes:

- Target sequence per utterance of length L: its L codes, then EOS, then PAD up to a multiple of G;
  so the last target group always holds EOS (at slot L mod G), and there are n = L // G + 1 target
  groups. Targets after EOS (the PAD slots of the last group, and every group past n) are ignored
  by the loss (-100); the model is never asked to predict padding, and at synthesis whatever the
  model emits after EOS inside that group is thrown away.
- Inputs are the target groups shifted right by one position: position 0 holds a learned BOS
  vector, position i >= 1 holds target group i - 1. Position i's logits predict target group i,
  i.e. codes[iG : iG + G] (EOS at index L). Inputs therefore only ever hold real codes of
  positions < L (padding in `codes1` is replaced by PAD before embedding, whatever it held).
- Group embedding: slot k of a group has its own embedding table (G tables of V + 2 rows, stored
  as one table), and the G slot embeddings are summed: the same as concatenating the G one-hot
  codes and projecting linearly to d. Group prediction: one linear layer d -> G x (V + 1),
  reshaped to G distributions over codes + EOS.

Synthesis uses `prefill` (text + prompt, returns a KV cache) and `decode_step` (one group at a
time); `tests/test_models.py` checks they reproduce `forward`'s logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import KV, SinePositions, Transformer, attention_mask, length_mask, target_stats, train_flops

IGNORE = -100  # target value the loss skips


@dataclass
class Cache:
    """KV cache for one utterance: each layer's keys/values so far and the next audio position."""

    kv: list[KV]  # n_layers x ((B, H, T_so_far, d_head), same); B = 1 after prefill
    next_pos: int  # audio position (in groups, BOS = 0) of the next group fed

    def repeat(self, n: int) -> Cache:
        """The cache of one utterance as n identical rows (n samples of the same prompt)."""
        return Cache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.kv], self.next_pos)

    def select(self, rows: torch.Tensor) -> Cache:
        """Only the given batch rows (samples still decoding)."""
        return Cache([(k[rows], v[rows]) for k, v in self.kv], self.next_pos)


class ARModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        V, G, d = cfg.codebook_size, cfg.group_size, cfg.d_model
        self.EOS, self.PAD = V, V + 1
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.text_pos = SinePositions(d, cfg.max_text_len, "text length")
        self.audio_emb = nn.Embedding(G * (V + 2), d)  # slot k's table is rows [k(V+2), (k+1)(V+2))
        self.bos = nn.Parameter(torch.randn(d))
        self.audio_pos = SinePositions(d, cfg.max_audio_frames // G + 2, "audio frames")
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        self.head = nn.Linear(d, G * (V + 1))  # group prediction layer
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("slot_offset", torch.arange(G) * (V + 2), persistent=False)

    # ---- sequences -------------------------------------------------------------------------
    def group_codes(self, codes1: torch.Tensor, code_lens: torch.Tensor):
        """codes1 (B, T) -> inputs (B, N-1, G), targets (B, N, G), n_positions (B,); N = ceil(T/G) + 1.

        targets: code at index < L, EOS at L, IGNORE after; inputs: code at index < L, PAD after.
        n_positions = L // G + 1 real positions (BOS + the input groups that predict up to EOS).
        """
        B, T = codes1.shape
        G = self.cfg.group_size
        N = -(-T // G) + 1
        idx = torch.arange(N * G, device=codes1.device)[None, :]  # (1, N*G)
        L = code_lens[:, None]  # (B, 1)
        codes = F.pad(codes1, (0, N * G - T))  # (B, N*G); garbage past L is masked out below
        real = idx < L
        inputs = torch.where(real, codes, self.PAD).view(B, N, G)[:, :-1]  # (B, N-1, G)
        targets = torch.where(real, codes, torch.where(idx == L, self.EOS, IGNORE)).view(B, N, G)
        return inputs, targets, code_lens // G + 1

    def embed_groups(self, groups: torch.Tensor) -> torch.Tensor:  # (B, T, G) -> (B, T, d)
        return self.audio_emb(groups + self.slot_offset).sum(dim=2)

    def prefix_lm_mask(self, text_lens, S: int, n_positions, N: int) -> torch.Tensor:
        """(B, 1, S+N, S+N): text -> real text; audio -> real text and real audio up to itself."""
        pos = torch.arange(S + N, device=text_lens.device)
        is_audio = pos >= S
        allowed = ~is_audio[None, :] | (is_audio[:, None] & (pos[None, :] <= pos[:, None]))  # (S+N, S+N)
        key_valid = torch.cat([length_mask(text_lens, S), length_mask(n_positions, N)], dim=1)  # (B, S+N)
        return attention_mask(key_valid, allowed)

    def _run(self, text, text_lens, inputs, n_positions, cache: bool = False):
        B, S = text.shape
        x_text = self.text_pos(self.text_emb(text))  # (B, S, d)
        x_audio = torch.cat([self.bos.expand(B, 1, -1), self.embed_groups(inputs)], dim=1)  # (B, N, d)
        x_audio = self.audio_pos(x_audio)
        N = x_audio.shape[1]
        x = self.drop(torch.cat([x_text, x_audio], dim=1))  # (B, S+N, d)
        h, kv = self.transformer(x, self.prefix_lm_mask(text_lens, S, n_positions, N))
        logits = self.head(h[:, S:]).view(B, N, self.cfg.group_size, -1)  # (B, N, G, V+1)
        return (logits, kv) if cache else logits

    # ---- training --------------------------------------------------------------------------
    def forward(self, text, text_lens, codes1, code_lens) -> torch.Tensor:
        """Logits (B, N, G, V+1), N = ceil(T/G) + 1: [:, i, k] predicts codes1[iG + k] (EOS at code_len)."""
        inputs, _, n_positions = self.group_codes(codes1, code_lens)
        return self._run(text, text_lens, inputs, n_positions)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Teacher-forced mean cross-entropy over real target codes (EOS included, padding not).

        Returns (loss, stats): "correct" (top-1 over the same targets), "tokens" (their count) and
        "histogram" (1, V+1) (how often each target occurs: the majority-code baseline), all
        detached tensors on the model's device (no host sync here).
        """
        codes1 = batch["codes"][:, 0]
        inputs, targets, n_positions = self.group_codes(codes1, batch["code_lens"])
        logits = self._run(batch["text"], batch["text_lens"], inputs, n_positions)
        logits, targets = logits.float().flatten(0, 2), targets.flatten()  # (B*N*G, V+1), (B*N*G,)
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
        real = targets != IGNORE
        correct = ((logits.argmax(-1) == targets) & real).sum()
        return loss, target_stats(correct, targets, real, self.EOS + 1)

    @property
    def histogram_shape(self) -> tuple[int, int]:
        return (1, self.EOS + 1)  # targets: codes and EOS

    def positions(self, text_lens, code_lens):
        """Sequence positions the model computes per utterance: text + BOS + L // G groups."""
        return text_lens + code_lens // self.cfg.group_size + 1

    def train_flops(self, text_lens: torch.Tensor, code_lens: torch.Tensor) -> float:
        """Forward+backward FLOPs of a batch at its real lengths (one position = one group)."""
        matmul = sum(p.numel() for p in self.transformer.parameters()) + self.head.weight.numel()
        return train_flops(self.cfg, matmul, self.positions(text_lens, code_lens))

    # ---- synthesis -------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, text: torch.Tensor, prompt_codes1: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        """text (1, S) unpadded, prompt_codes1 (1, P), P a multiple of G (P = 0 allowed)
        -> (logits (G, V+1) of the group after the prompt, cache). Call in eval mode."""
        G, P = self.cfg.group_size, prompt_codes1.shape[1]
        if text.shape[0] != 1 or prompt_codes1.shape[0] != 1:
            raise ValueError("prefill takes one utterance: text (1, S) and prompt_codes1 (1, P)")
        if P % G:
            raise ValueError(f"prompt of {P} codes is not a multiple of the group size {G}; pad or trim it")
        inputs = prompt_codes1.view(1, P // G, G)
        text_lens = torch.full((1,), text.shape[1], device=text.device)
        n_positions = torch.full((1,), P // G + 1, device=text.device)
        logits, kv = self._run(text, text_lens, inputs, n_positions, cache=True)
        return logits[0, -1], Cache(kv=kv, next_pos=P // G + 1)

    @torch.no_grad()
    def decode_step(self, group: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """Feed one group of codes, (G,) or a batch (B, G) of samples at the same position; returns
        the next group's logits, (G, V+1) or (B, G, V+1), and the grown cache."""
        groups = group.view(-1, 1, self.cfg.group_size)  # (B, 1, G)
        x = self.audio_pos(self.embed_groups(groups), start=cache.next_pos)  # (B, 1, d)
        h, kv = self.transformer(x, None, past=cache.kv)  # the new position attends to everything cached
        logits = self.head(h[:, -1]).view(groups.shape[0], self.cfg.group_size, -1)  # (B, G, V+1)
        return (logits[0] if group.dim() == 1 else logits), Cache(kv=kv, next_pos=cache.next_pos + 1)
