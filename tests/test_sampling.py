"""Nucleus sampling, repetition-aware sampling (VALL-E 2 Algorithm 1) and the AR generation loop,
on fixed logits with seeded generators and a scripted fake model. CPU only, well under a second."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from trainer.sampling import (
    SamplingConfig,
    generate_ar,
    generate_ar_samples,
    nucleus_mask,
    nucleus_sample,
    repetition_aware_sample,
    repetition_ratio,
    sample_group,
)

V = 1024
EOS = 1024


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) if p > 0 else -math.inf for p in probs])


def peaked(token: int, head: float = 0.9, vocab: int = 8) -> torch.Tensor:
    """Logits where `token` has mass `head` and the other tokens share the rest equally."""
    rest = (1.0 - head) / (vocab - 1)
    return logits_from_probs([head if i == token else rest for i in range(vocab)])


# ---- nucleus ----------------------------------------------------------------------------------


def test_nucleus_mask_is_smallest_set_reaching_top_p():
    probs = torch.tensor([0.125, 0.5, 0.125, 0.25])  # exact in binary
    assert nucleus_mask(probs, 0.75).tolist() == [False, True, False, True]  # 0.5 + 0.25 reaches
    assert nucleus_mask(probs, 0.7500001).tolist() == [True, True, False, True]  # tie -> index 0
    assert nucleus_mask(probs, 0.1).tolist() == [False, True, False, False]  # argmax always kept
    assert nucleus_mask(probs, 1.0).tolist() == [True, True, True, True]


def test_nucleus_ties_break_by_lower_index():
    assert nucleus_mask(torch.full((4,), 0.25), 0.5).tolist() == [True, True, False, False]


def test_nucleus_sample_never_leaves_nucleus_and_follows_proportions():
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3])  # nucleus at 0.75: {1, 3}
    g = gen(1)
    draws = Counter(nucleus_sample(logits, 0.75, g) for _ in range(2000))
    assert set(draws) == {1, 3}
    assert abs(draws[1] / 2000 - 0.5 / 0.8) < 0.05


def test_nucleus_sample_rejects_invalid_logits():
    with pytest.raises(ValueError, match="no valid distribution"):
        nucleus_sample(torch.full((4,), -math.inf), 0.8, gen())


# ---- repetition-aware sampling ------------------------------------------------------------------


def test_ras_falls_back_to_full_distribution_when_nucleus_draw_repeats():
    logits = peaked(0)  # p(0) = 0.9; nucleus at top_p 0.5 is {0}
    cfg = SamplingConfig(top_p=0.5)
    g = gen(2)
    repeated = Counter(repetition_aware_sample(logits, [0] * 10, cfg, g) for _ in range(1000))
    assert set(repeated) - {0}, "fallback never left the nucleus"
    # the fallback is the unmodified softmax: 0 is not excluded and keeps its 0.9
    assert 0.84 < repeated[0] / 1000 < 0.96
    fresh = Counter(repetition_aware_sample(logits, list(range(1, 11)), cfg, g) for _ in range(500))
    assert set(fresh) == {0}


def test_ras_exactly_at_threshold_does_not_trigger():
    logits, cfg, g = peaked(0), SamplingConfig(top_p=0.5), gen(3)
    at = [0] + list(range(1, 10))  # 1 of the last 10 -> ratio 0.1, not > 0.1
    assert repetition_ratio(0, at, 10) == 0.1
    assert {repetition_aware_sample(logits, at, cfg, g) for _ in range(500)} == {0}
    above = [0, 0] + list(range(1, 9))  # 2 of 10 -> 0.2 > 0.1
    assert {repetition_aware_sample(logits, above, cfg, g) for _ in range(500)} != {0}


def test_ras_window_uses_only_last_k_and_divides_by_k():
    logits, g = peaked(0), gen(4)
    cfg = SamplingConfig(top_p=0.5, window=10)
    old_repeats = [0] * 20 + list(range(1, 11))  # zeros all older than the last 10
    assert {repetition_aware_sample(logits, old_repeats, cfg, g) for _ in range(300)} == {0}
    wide = SamplingConfig(top_p=0.5, window=40)  # now the zeros are inside the window
    assert {repetition_aware_sample(logits, old_repeats, wide, g) for _ in range(300)} != {0}
    # short history: the ratio is count / K, not count / len(history)
    assert repetition_ratio(0, [0], 10) == 0.1
    assert {repetition_aware_sample(logits, [0], cfg, g) for _ in range(300)} == {0}
    assert {repetition_aware_sample(logits, [0, 0], cfg, g) for _ in range(300)} != {0}


def test_temperature_sharpens_and_flattens_both_draws():
    logits = torch.tensor([1.0, 0.0])
    g = gen(5)
    cold = SamplingConfig(top_p=1.0, temperature=0.01)
    assert {repetition_aware_sample(logits, [], cold, g) for _ in range(200)} == {0}
    hot = Counter(
        repetition_aware_sample(logits, [], SamplingConfig(top_p=1.0, temperature=1e3), g) for _ in range(2000)
    )
    assert abs(hot[0] / 2000 - 0.5) < 0.05
    # in fallback (history full of 0) a cold temperature keeps the full-distribution draw on 0
    cold_nucleus = SamplingConfig(top_p=0.5, temperature=0.05)
    assert {repetition_aware_sample(peaked(0), [0] * 10, cold_nucleus, g) for _ in range(300)} == {0}
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)


def test_same_seed_same_draws():
    logits, cfg = torch.randn(64, generator=gen(9)), SamplingConfig()
    a = [repetition_aware_sample(logits, [3] * 10, cfg, g) for g in [gen(7)] for _ in range(50)]
    b = [repetition_aware_sample(logits, [3] * 10, cfg, g) for g in [gen(7)] for _ in range(50)]
    assert a == b


# ---- groups ------------------------------------------------------------------------------------


def test_group_codes_see_earlier_codes_of_the_same_group():
    cfg = SamplingConfig(top_p=0.5)  # every row's nucleus is {7}
    logits = torch.stack([peaked(7)] * 3)  # (G=3, V=8)
    g = gen(6)
    per_row = [Counter() for _ in range(3)]
    for _ in range(400):
        history: list[int] = []
        codes = sample_group(logits, history, cfg, g)
        assert history == codes
        for row, code in zip(per_row, codes):
            row[code] += 1
    assert set(per_row[0]) == {7}  # window [] -> ratio 0
    assert set(per_row[1]) == {7}  # window [7] -> ratio 0.1, not exceeding
    assert set(per_row[2]) != {7}  # window [7, 7] -> 0.2: fallback happens


def test_group_appends_to_existing_history_in_order():
    history = [1, 2]
    codes = sample_group(
        torch.stack([peaked(4, head=1 - 1e-9), peaked(5, head=1 - 1e-9)]), history, SamplingConfig(top_p=0.5), gen()
    )
    assert codes == [4, 5] and history == [1, 2, 4, 5]


def test_group_of_one_is_plain_ras():
    logits, cfg = torch.randn(32, generator=gen(3)), SamplingConfig()
    single = repetition_aware_sample(logits, [5, 5], cfg, gen(11))
    assert sample_group(logits[None], [5, 5], cfg, gen(11)) == [single]


# ---- generate_ar -------------------------------------------------------------------------------


class ScriptedAR:
    """Fake AR model: step i returns logits that put (almost) all mass on script[i] (G codes),
    or fixed random logits when no script is given. Records what it was fed."""

    def __init__(self, group_size: int, script: list[list[int]] | None = None, seed: int = 0):
        self.cfg = SimpleNamespace(group_size=group_size)
        self.EOS = EOS
        self.script = script
        self.fixed = torch.randn(group_size, V + 1, generator=gen(seed))
        self.prefill_prompt = None
        self.fed: list[list[int]] = []

    def _logits(self, step: int) -> torch.Tensor:
        if self.script is None:
            return self.fixed.clone()
        out = torch.zeros(self.cfg.group_size, V + 1)  # (G, V+1)
        for i, code in enumerate(self.script[step % len(self.script)]):
            out[i, code] = 60.0
        return out

    def prefill(self, text, prompt):
        self.prefill_prompt = prompt.tolist()
        return self._logits(0), ScriptCache(0, 1)

    def decode_step(self, groups, cache):
        assert groups.dtype == torch.long and groups.shape == (cache.rows, self.cfg.group_size)
        self.fed.extend(groups.tolist())
        step = cache.step + 1
        return self._logits(step).expand(cache.rows, -1, -1), ScriptCache(step, cache.rows)


@dataclass
class ScriptCache:
    step: int
    rows: int  # samples in the batch

    def repeat(self, n: int) -> ScriptCache:
        assert self.rows == 1
        return ScriptCache(self.step, n)

    def select(self, rows: torch.Tensor) -> ScriptCache:
        assert int(rows.max()) < self.rows
        return ScriptCache(self.step, len(rows))


TEXT = torch.tensor([[5, 6, 7]])


def test_generate_stops_at_first_eos_and_drops_rest_of_group():
    model = ScriptedAR(2, [[1, 2], [3, EOS], [9, 9]])
    out = generate_ar(model, TEXT, torch.tensor([[8, 8, 8, 8]]), SamplingConfig(), gen())
    assert out.dtype == torch.long and out.tolist() == [1, 2, 3]
    assert model.fed == [[1, 2]]  # no step after the EOS group


def test_generate_eos_first_in_group_gives_nothing_after_it():
    model = ScriptedAR(3, [[1, 2, 3], [EOS, 4, 5]])
    assert generate_ar(model, TEXT, torch.tensor([[8, 8, 8]]), SamplingConfig(), gen()).tolist() == [1, 2, 3]


def test_generate_respects_max_frames_without_eos():
    model = ScriptedAR(2, [[1, 2], [3, 4], [5, 6]])
    out = generate_ar(model, TEXT, torch.tensor([[8, 8]]), SamplingConfig(max_frames=5), gen())
    assert out.tolist() == [1, 2, 3, 4, 5]  # third group cut to fit
    assert model.fed == [[1, 2], [3, 4]]  # no decode step after the limit


def test_generate_trims_prompt_from_front_to_multiple_of_group():
    model = ScriptedAR(2, [[EOS, EOS]])
    out = generate_ar(model, TEXT, torch.tensor([[10, 11, 12, 13, 14]]), SamplingConfig(), gen())
    assert model.prefill_prompt == [[11, 12, 13, 14]] and out.numel() == 0
    with pytest.raises(ValueError, match="fewer than one group"):
        generate_ar(ScriptedAR(2, [[1, 2]]), TEXT, torch.tensor([[10]]), SamplingConfig(), gen())


def test_length_guard_masks_eos_until_min_frames():
    model = ScriptedAR(2, [[EOS, EOS]])  # a model that wants to stop at once, as an untrained one may
    assert generate_ar(model, TEXT, torch.tensor([[8, 8]]), SamplingConfig(), gen()).numel() == 0
    out = generate_ar(model, TEXT, torch.tensor([[8, 8]]), SamplingConfig(min_frames=5), gen())
    assert out.numel() == 5 and EOS not in out.tolist()  # EOS allowed from code 6 on: slot 2 of group 3
    with pytest.raises(ValueError, match="min_frames"):
        SamplingConfig(min_frames=10, max_frames=5)


def test_samples_decode_as_one_batch_and_match_single_runs():
    cfg = SamplingConfig(max_frames=30)
    batch = generate_ar_samples(ScriptedAR(2, seed=3), TEXT, torch.tensor([[1, 2]]), cfg, [gen(s) for s in range(4)])
    single = [generate_ar(ScriptedAR(2, seed=3), TEXT, torch.tensor([[1, 2]]), cfg, gen(s)) for s in range(4)]
    assert [b.tolist() for b in batch] == [s.tolist() for s in single]
    assert len({tuple(b.tolist()) for b in batch}) > 1  # other generators, other samples


def test_finished_samples_leave_the_batch():
    model = ScriptedAR(1, [[3], [EOS]])  # every sample ends after one code unless the guard holds it
    cfg = SamplingConfig(max_frames=6)
    out = generate_ar_samples(model, TEXT, torch.tensor([[1]]), cfg, [gen(0), gen(1)])
    assert [o.tolist() for o in out] == [[3], [3]] and model.fed == [[3], [3]]


def test_generate_is_reproducible_and_never_emits_eos():
    cfg = SamplingConfig(max_frames=40)
    runs = [generate_ar(ScriptedAR(2), TEXT, torch.tensor([[1, 2]]), cfg, gen(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    for r in runs:
        assert r.numel() <= 40 and EOS not in r.tolist()
