"""The non-autoregressive (NAR) model: codebooks 2..K from text, codebook 1 and an acoustic prompt.

In: text (B, S) BPE ids (pad 0) with text_lens (B,), codes (B, K, T) with code_lens (B,),
prompt_lens (B,) (the split T') and stage (B,) in 1..K-1. Out: logits (B, T, V) for codebook
`stage` (0-based: stage 1 predicts codebook 2) at every frame; the loss reads frames T'..L-1.

One bidirectional Transformer over [text ; audio frames] (every real position attends to every
real position; padding never attended). Audio frame t's input is the sum of per-codebook
embeddings (one table per codebook) of
- all K codebooks when t < T' (the acoustic prompt: the utterance's own start), and
- codebooks 0..stage-1 when t >= T' (those already known when predicting codebook `stage`).
Text and audio each count positions from 0 (two sinusoidal tables).

Conditioning on the codebook index: adaptive LayerNorm (as VALL-E does): every norm of every
block, and the final one, scales and shifts by a learned pair per stage. Chosen over an index
embedding added to the input because the stage then reaches every layer directly (an input
embedding must survive 12 residual layers) and costs no sequence position; it is cheap
(2 x d x (K-1) parameters per norm). Each stage has its own output layer d -> V.

Training draws per utterance (see `draw`): stage uniform in 1..K-1, and the prompt split T'
uniform in [lo, hi] frames with hi = min(prompt_seconds[1], 3/4 of the utterance) and
lo = min(prompt_seconds[0], 3/8 of it): the prompt lengths synthesis will be given (VALL-E 2 is
evaluated with 3, 5 and 10 s prompts; default 1.5-10 s), and at least a quarter of every
utterance is left as target.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import SinePositions, Transformer, attention_mask, length_mask, target_stats, train_flops


class NARModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        K, V, d = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.text_pos = SinePositions(d, cfg.max_text_len, "text length")
        self.audio_emb = nn.ModuleList(nn.Embedding(V, d) for _ in range(K))  # one table per codebook
        self.audio_pos = SinePositions(d, cfg.max_audio_frames, "audio frames")
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg, n_cond=K - 1)  # AdaLN row s - 1 for stage s
        self.heads = nn.Parameter(torch.randn(K - 1, V, d) * 0.02)  # output layer of stage s: heads[s - 1]

    def embed_audio(self, codes, code_lens, prompt_lens, stage) -> torch.Tensor:
        B, K, T = codes.shape  # codes (B, K, T)
        real = length_mask(code_lens, T)  # (B, T)
        in_prompt = length_mask(prompt_lens, T)  # (B, T)
        x = torch.zeros(B, T, self.cfg.d_model, device=codes.device)
        for k in range(K):
            use = real & (in_prompt | (k < stage)[:, None])  # (B, T): codebook k is an input here
            ids = torch.where(use, codes[:, k], 0)  # padding may hold anything
            x = x + self.audio_emb[k](ids) * use[..., None]
        return x  # (B, T, d)

    def forward(self, text, text_lens, codes, code_lens, prompt_lens, stage) -> torch.Tensor:
        """Logits (B, T, V) for codebook `stage` (0-based, in 1..K-1) at every audio frame."""
        B, S = text.shape
        T = codes.shape[2]
        x_text = self.text_pos(self.text_emb(text))  # (B, S, d)
        x_audio = self.audio_pos(self.embed_audio(codes, code_lens, prompt_lens, stage))  # (B, T, d)
        x = self.drop(torch.cat([x_text, x_audio], dim=1))  # (B, S+T, d)
        mask = attention_mask(torch.cat([length_mask(text_lens, S), length_mask(code_lens, T)], dim=1))
        h, _ = self.transformer(x, mask, cond=stage - 1)  # (B, S+T, d)
        return torch.bmm(h[:, S:], self.heads[stage - 1].transpose(1, 2))  # (B, T, d) @ (B, d, V) -> (B, T, V)

    def draw(self, code_lens: torch.Tensor, generator: torch.Generator | None = None):
        """Per utterance: stage uniform in 1..K-1; prompt split T' uniform in [lo, hi] frames,
        hi = min(prompt_seconds[1] x frame rate, 3L/4), lo = min(prompt_seconds[0] x frame rate, 3L/8).
        Draws on the CPU (reproducible from `generator`)."""
        K = self.cfg.n_codebooks
        low, high = (self.cfg.frames(s) for s in self.cfg.prompt_seconds)
        u = torch.rand(code_lens.shape[0], 2, generator=generator)  # (B, 2)
        u = u.to(code_lens.device, non_blocking=True)  # staged at once: no wait for the GPU's queue
        stage = 1 + (u[:, 0] * (K - 1)).long().clamp(max=K - 2)
        cap = (code_lens * 3) // 4
        hi, lo = torch.clamp(cap, max=high), torch.clamp(cap // 2, max=low)
        prompt_lens = lo + (u[:, 1] * (hi - lo + 1)).long().clamp(max=hi - lo)
        return stage, prompt_lens

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over frames T' <= t < L of codebook `stage` (drawn by `draw`).

        Returns (loss, stats) as ARModel.loss does; the histogram has one row per stage.
        """
        codes, code_lens = batch["codes"], batch["code_lens"]
        B, K, T = codes.shape
        stage, prompt_lens = self.draw(code_lens, generator)
        logits = self(batch["text"], batch["text_lens"], codes, code_lens, prompt_lens, stage)  # (B, T, V)
        targets = codes.gather(1, stage[:, None, None].expand(B, 1, T))[:, 0]  # (B, T)
        scored = length_mask(code_lens, T) & ~length_mask(prompt_lens, T)  # (B, T)
        logits = logits.float().flatten(0, 1)  # (B*T, V); masking by index would sync with the host
        flat = torch.where(scored, targets, -100).flatten()
        loss = F.cross_entropy(logits, flat, ignore_index=-100, reduction="sum") / scored.sum().clamp(min=1)
        correct = ((logits.argmax(-1) == flat) & scored.flatten()).sum()
        group = (stage - 1)[:, None].expand(B, T).flatten()
        return loss, target_stats(correct, flat, scored.flatten(), self.cfg.codebook_size, K - 1, group)

    @property
    def histogram_shape(self) -> tuple[int, int]:
        return (self.cfg.n_codebooks - 1, self.cfg.codebook_size)  # targets per stage

    def positions(self, text_lens, code_lens):
        """Sequence positions the model computes per utterance: text + frames."""
        return text_lens + code_lens

    def train_flops(self, text_lens: torch.Tensor, code_lens: torch.Tensor) -> float:
        """Forward+backward FLOPs of a batch at its real lengths (one stage head per frame)."""
        matmul = sum(p.numel() for p in self.transformer.parameters()) + self.heads[0].numel()
        return train_flops(self.cfg, matmul, self.positions(text_lens, code_lens))

    @torch.no_grad()
    def predict(self, text: torch.Tensor, prompt_codes: torch.Tensor, codes1: torch.Tensor) -> torch.Tensor:
        """text (1, S), prompt_codes (1, K, P), codes1 (1, T) -> (K, T): codebook 1 as given, codebooks
        2..K filled greedily one stage at a time. Call in eval mode."""
        return self.predict_samples(text, prompt_codes, [codes1[0]])[0]

    @torch.no_grad()
    def predict_samples(self, text: torch.Tensor, prompt_codes: torch.Tensor, codes1: list[torch.Tensor]):
        """`predict` for several codebook-1 continuations (T_i,) of one text and prompt, as one
        padded batch (padding is never attended); returns one (K, T_i) tensor each."""
        K, P = self.cfg.n_codebooks, prompt_codes.shape[2]
        B, dev = len(codes1), prompt_codes.device
        lens = torch.tensor([P + c.numel() for c in codes1], device=dev)  # (B,)
        codes = torch.zeros(B, K, int(lens.max()), dtype=torch.long, device=dev)
        codes[:, :, :P] = prompt_codes
        for b, c in enumerate(codes1):
            codes[b, 0, P : P + c.numel()] = c.to(dev)
        texts = text.expand(B, -1)
        text_lens = torch.full((B,), text.shape[1], device=dev)
        prompt_lens = torch.full((B,), P, device=dev)
        for s in range(1, K):
            stage = torch.full((B,), s, dtype=torch.long, device=dev)
            logits = self(texts, text_lens, codes, lens, prompt_lens, stage)  # (B, P+T, V)
            codes[:, s, P:] = logits[:, P:].argmax(-1)
        return [codes[b, :, P : P + c.numel()] for b, c in enumerate(codes1)]
