"""AR decoding for VALL-E / VALL-E 2: nucleus sampling, repetition-aware sampling (RAS) and a
KV-cached generation loop over codebook-1 codes of the corpus's codec.

In:  logits over the AR audio vocabulary (the codec's codes, e.g. EnCodec's 1024, + EOS), the codes decoded
     so far, a `SamplingConfig` and a seeded `torch.Generator`.
Out: sampled code ids; `generate_ar` returns the generated codebook-1 codes (T,) without the
     prompt and without EOS.

Repetition-aware sampling, as described in "VALL-E 2: Neural Codec Language Models are Human
Parity Zero-Shot Text to Speech Synthesizers" (Chen et al., 2024, arXiv:2406.05370), section on
AR inference with repetition-aware sampling, Algorithm 1. Our reading of it:
  1. draw a candidate code c by nucleus sampling with top-p v from the predicted distribution p;
  2. count how often c occurs among the K codes decoded just before this step (the candidate
     itself is not part of that window) and divide by K, giving the repetition ratio r;
  3. if r > t_r (strictly greater), throw c away and draw again by random sampling from the whole,
     untruncated p; that second draw may land on c again, it is not excluded.
  The paper's defaults are K = 10 and t_r = 0.1; RAS is used for the AR model only (the NAR
  decodes greedily). Algorithm 1 does not mention temperature.
  Provenance: the search tool surfaced the paper's abstract (RAS "refines the original nucleus
  sampling process by accounting for token repetition in the decoding history") but not the page
  with Algorithm 1, so steps 1-3 are from our reading of the paper, cross-checked against the
  widely used public CosyVoice `ras_sampling` (labelled "Repetition Aware Sampling in VALL-E 2"):
  it also counts the nucleus draw among the last K decoded tokens, divides by K (not by the
  history length) and falls back to a softmax draw over the whole vocabulary. One difference:
  CosyVoice triggers on `count >= K * t_r`; we follow the paper's "exceeds" (`count / K > t_r`),
  so with the defaults a single earlier occurrence (ratio exactly 0.1) does not trigger.

Choices of ours (not in the paper):
  - Denominator is always K, also when fewer than K codes have been decoded, as in the paper's
    sum over the K previous positions; early in decoding the ratio is therefore smaller.
  - Temperature divides the logits once, and the resulting distribution is the p of both the
    nucleus draw and the fallback draw. At the default 1.0 this is exactly Algorithm 1.
  - `history` in `generate_ar` holds only generated codes, not the prompt: the prompt is another
    recording, and its trailing silence should not push the first generated codes into fallback.
  - Group size G > 1 (VALL-E 2 grouped code modeling: one AR step emits G consecutive frames):
    see `sample_group`. The G codes are drawn in time order and each one sees the codes drawn
    before it in the same group, so "the last K codes" means the same thing for every G.
  - Prompt length not a multiple of G: the oldest P mod G prompt codes are dropped (trimmed from
    the front). Trimming keeps the end of the prompt, which the continuation must join, and
    avoids inventing a padding code the model never saw next to real audio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SamplingConfig:
    top_p: float = 0.8  # nucleus mass v, in (0, 1]
    window: int = 10  # K: how many previous codes RAS looks at
    repetition_threshold: float = 0.1  # t_r: fallback when count / K > t_r
    temperature: float = 1.0  # divides the logits of both draws; > 0
    max_frames: int = 75 * 30  # stop after this many codes if no EOS (30 s of EnCodec's; callers set it)
    min_frames: int = 0  # EOS is not drawn before this many codes (the length guard)

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.window < 1:
            raise ValueError(f"window={self.window}: must be at least 1 code")
        if not 0.0 <= self.repetition_threshold <= 1.0:
            raise ValueError(f"repetition_threshold={self.repetition_threshold}: must be in [0, 1]")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (no greedy mode here)")
        if self.max_frames < 1:
            raise ValueError(f"max_frames={self.max_frames}: must be at least 1")
        if not 0 <= self.min_frames <= self.max_frames:
            raise ValueError(f"min_frames={self.min_frames}: must be in [0, max_frames={self.max_frames}]")


@dataclass
class LengthGuard:
    """How long speech for a text may be, in seconds per BPE token of the text spoken: the same
    bounds whatever the codec's frame rate (`bounds` turns them into frames).

    An AR model can end at once (EOS first: the 5-frame output of an undertrained model) or never
    (a loop until max_frames). CosyVoice bounds its LLM's decoding by speech tokens per text token
    (min 2, max 20 of its 25 Hz tokens, i.e. 80-800 ms a token of its large-vocabulary BPE). Ours:
    EOS is masked before `min_per_token` seconds a token and output is cut at `max_per_token`.
    Defaults 4/75 and 40/75 s (53-533 ms a token; 4 and 40 EnCodec frames): the sample corpus (BPE
    128, the shortest tokens we build) speaks 91-156 ms a token, and a larger BPE has longer
    tokens, so more time each; 53 ms sits below the fastest of the shortest, 533 ms leaves room for
    slow speech of long tokens while stopping a loop a few seconds past where speech should end.
    valle-eval reports the ground truth's seconds a token for its set and warns when they fall
    outside the guard.
    """

    min_per_token: float = 4 / 75
    max_per_token: float = 40 / 75

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_per_token <= self.max_per_token or not self.max_per_token > 0:
            raise ValueError(
                f"length guard {self.min_per_token:g}-{self.max_per_token:g} s a token: "
                "need 0 <= min <= max and max > 0"
            )

    def bounds(self, tokens: int, frame_rate: float, given: int = 0, room: int | None = None) -> tuple[int, int]:
        """(min_frames, max_frames) at `frame_rate` frames/s to generate for speech of `tokens`
        text tokens of which `given` frames already exist (a continuation's prompt), never more
        than `room` frames. Whole frames within 1e-6 of a bound count as on it (4/75 s x 75 is 4)."""
        most = self.max_per_token * tokens * frame_rate
        least = self.min_per_token * tokens * frame_rate
        high = max(1, math.floor(most + 1e-6) - given)
        high = high if room is None else max(1, min(room, high))
        low = min(high, max(0, math.ceil(least - 1e-6) - given))
        return low, high


def _probs(logits: Tensor) -> Tensor:
    """Softmax in float32 of a (V,) logit vector; refuses NaN or all -inf rows."""
    if logits.dim() != 1:
        raise ValueError(f"logits must be (V,), got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.float(), dim=-1)  # (V,)
    if not torch.isfinite(probs).all():
        raise ValueError("logits give no valid distribution (NaN, or every entry -inf)")
    return probs


def _draw(weights: Tensor, generator: torch.Generator) -> int:
    """One index drawn in proportion to `weights` (V,), on the generator's device."""
    weights = weights.to(generator.device)
    return int(torch.multinomial(weights, 1, generator=generator).item())


def nucleus_mask(probs: Tensor, top_p: float) -> Tensor:
    """(V,) bool: the smallest set of most probable tokens whose total mass reaches top_p.

    Tokens are ranked by probability, ties broken by lower index first; a token is kept while
    the mass of the tokens ranked above it is still below top_p, so the token that makes the
    mass reach (>=) top_p is the last one kept. The most probable token is always kept.
    """
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)  # (V,), (V,)
    mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # (V,)
    keep_sorted = mass_before < top_p
    keep_sorted[0] = True
    mask = torch.zeros_like(keep_sorted)
    mask[order] = keep_sorted
    return mask


def nucleus_sample(logits: Tensor, top_p: float, generator: torch.Generator) -> int:
    """Top-p sampling from (V,) logits: draw from the nucleus, renormalised."""
    probs = _probs(logits)
    return _draw(probs * nucleus_mask(probs, top_p), generator)


def repetition_ratio(code: int, history: Sequence[int], window: int) -> float:
    """Occurrences of `code` among the last `window` entries of `history`, divided by `window`."""
    recent = history[-window:] if len(history) > window else history
    return sum(1 for c in recent if c == code) / window


def repetition_aware_sample(
    logits: Tensor, history: Sequence[int], cfg: SamplingConfig, generator: torch.Generator
) -> int:
    """VALL-E 2 Algorithm 1 on (V,) logits: nucleus draw, then a fresh draw from the full
    distribution if the nucleus draw's share of the last `cfg.window` codes of `history`
    (codes decoded before this one, oldest first) exceeds `cfg.repetition_threshold`."""
    scaled = logits.float() / cfg.temperature
    code = nucleus_sample(scaled, cfg.top_p, generator)
    if repetition_ratio(code, history, cfg.window) > cfg.repetition_threshold:
        code = _draw(_probs(scaled), generator)
    return code


def sample_group(logits: Tensor, history: list[int], cfg: SamplingConfig, generator: torch.Generator) -> list[int]:
    """Draw the G codes of one AR step from (G, V) logits; row i is frame i of the group.

    Rule for G > 1: the rows are drawn in order, each by `repetition_aware_sample`, and each drawn
    code is appended to `history` (in place) before the next row is drawn. So row i's window is
    the last K codes in time order, including rows 0..i-1 of this group, exactly as if the frames
    had been decoded one per step; a group of G identical codes is caught inside the group.
    G = 1 is plain Algorithm 1. Returns the G codes; `history` has grown by G.
    """
    if logits.dim() != 2:
        raise ValueError(f"group logits must be (G, V), got shape {tuple(logits.shape)}")
    codes = []
    for row in logits:  # (V,)
        code = repetition_aware_sample(row, history, cfg, generator)
        history.append(code)
        codes.append(code)
    return codes


def generate_ar(model, text: Tensor, prompt_codes1: Tensor, cfg: SamplingConfig, generator: torch.Generator) -> Tensor:
    """Generate codebook-1 codes after a prompt, G codes per KV-cached step.

    text: (1, S) token ids; prompt_codes1: (1, P) codebook-1 codes of the speaker prompt.
    Uses only `model.prefill(text, prompt) -> (logits (G, V+1), cache)`,
    `model.decode_step(groups (B, G) long, cache) -> (logits (B, G, V+1), cache)`, `cache.repeat`,
    `cache.select`, `model.EOS` and `model.cfg.group_size`. The prompt is trimmed from the front
    to a multiple of G (at least one group must remain). EOS is masked out for the first
    `cfg.min_frames` codes; decoding stops at the first EOS (the rest of that group is dropped) or
    once `cfg.max_frames` codes exist (the last group is cut to fit). Returns (T,) long on CPU,
    cfg.min_frames <= T <= cfg.max_frames, without the prompt and never containing EOS.
    """
    return generate_ar_samples(model, text, prompt_codes1, cfg, [generator])[0]


def generate_ar_samples(
    model, text: Tensor, prompt_codes1: Tensor, cfg: SamplingConfig, generators: Sequence[torch.Generator]
) -> list[Tensor]:
    """`generate_ar` for len(generators) samples of the same text and prompt, decoded as one batch.

    The prompt is prefilled once and its cache shared; sample i draws from `generators[i]` with
    its own repetition history, and leaves the batch when it ends, so the batch shrinks as
    samples finish. Returns one (T_i,) long tensor per generator, in order.
    """
    G = int(model.cfg.group_size)
    eos = int(model.EOS)
    if prompt_codes1.dim() != 2 or prompt_codes1.shape[0] != 1:
        raise ValueError(f"prompt_codes1 must be (1, P), got shape {tuple(prompt_codes1.shape)}")
    P = prompt_codes1.shape[1]
    usable = P - P % G
    if usable == 0:
        raise ValueError(f"prompt has {P} codes, fewer than one group of {G}; give at least {G}")
    prompt = prompt_codes1[:, P - usable :]  # (1, usable): the oldest P mod G codes dropped

    n = len(generators)
    generated: list[list[int]] = [[] for _ in range(n)]
    histories: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))  # samples still decoding, in batch-row order
    with torch.inference_mode():
        logits, cache = model.prefill(text, prompt)  # (G, V+1)
        logits, cache = logits.expand(n, -1, -1), cache.repeat(n)  # (n, G, V+1)
        while True:
            if logits.shape[1] != G:
                raise ValueError(f"model returned logits for {logits.shape[1]} frames, expected group_size={G}")
            groups, still = [], []
            for row, i in enumerate(active):
                out = generated[i]
                group = sample_group(guard_eos(logits[row], len(out), cfg, eos), histories[i], cfg, generators[i])
                if eos in group:
                    out.extend(group[: group.index(eos)])
                    continue
                out.extend(group)
                if len(out) < cfg.max_frames:
                    groups.append(group)
                    still.append(row)
            if not still:
                break
            if len(still) < len(active):
                cache = cache.select(torch.tensor(still, device=logits.device))
                active = [active[row] for row in still]
            step = torch.tensor(groups, dtype=torch.long, device=logits.device)  # (B, G)
            logits, cache = model.decode_step(step, cache)
    return [torch.tensor(out[: cfg.max_frames], dtype=torch.long) for out in generated]


def guard_eos(logits: Tensor, done: int, cfg: SamplingConfig, eos: int) -> Tensor:
    """(G, V+1) group logits with EOS made impossible in rows that would end the output before
    `cfg.min_frames` codes (row k is code number done + k)."""
    early = cfg.min_frames - done
    if early <= 0:
        return logits
    logits = logits.clone()
    logits[:early, eos] = float("-inf")
    return logits
