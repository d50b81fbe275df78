"""AR and NAR models (trainer/models/): shapes, masks, KV cache, loss bookkeeping, a learning smoke test.

Tiny preset on CPU; each test runs in well under a few seconds.
"""

from __future__ import annotations

import pytest
import torch

from trainer.models import PRESETS, ARModel, NARModel, base, tiny
from trainer.models.ar import IGNORE

VOCAB = 50


def make_batch(seed=0, B=3, S=9, T=23, text_lens=(9, 5, 7), code_lens=(23, 11, 17), K=8):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, VOCAB, (B, S), generator=g)
    tl = torch.tensor(text_lens)
    text[torch.arange(S)[None] >= tl[:, None]] = 0
    codes = torch.randint(0, 1024, (B, K, T), generator=g)
    cl = torch.tensor(code_lens)
    codes[(torch.arange(T)[None, None] >= cl[:, None, None]).expand(B, K, T)] = -1  # loader may pad with anything
    return {"text": text, "text_lens": tl, "codes": codes, "code_lens": cl}


def ar(G=1, seed=0):
    torch.manual_seed(seed)
    return ARModel(tiny(VOCAB, group_size=G)).eval()


def nar(seed=0):
    torch.manual_seed(seed)
    return NARModel(tiny(VOCAB)).eval()


def ar_logits(m, b, **kw):
    b = {**b, **kw}
    return m(b["text"], b["text_lens"], b["codes"][:, 0], b["code_lens"])


# ---- AR -------------------------------------------------------------------------------------
@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_ar_shapes_and_loss(G):
    m, b = ar(G), make_batch()  # T = 23, code lengths 23, 11, 17: none a multiple of 2, 4 or 8
    logits = ar_logits(m, b)
    assert logits.shape == (3, -(-23 // G) + 1, G, 1025)
    assert torch.isfinite(logits).all()  # padded query rows included
    loss, stats = m.loss(b)
    assert torch.isfinite(loss) and stats["tokens"].item() == (23 + 1) + (11 + 1) + (17 + 1)  # codes + EOS
    assert 0 <= stats["correct"].item() <= stats["tokens"].item()
    histogram = stats["histogram"]  # every real target once: codes and EOS (the majority baseline)
    assert histogram.shape == (1, 1025) and histogram.sum().item() == stats["tokens"].item()
    assert histogram[0, 1024].item() == 3  # one EOS per utterance


def test_ar_group_alignment():
    m = ar(G=2)
    c = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, -7]])
    inputs, targets, n_pos = m.group_codes(c, torch.tensor([5, 4]))
    E, P, I = m.EOS, m.PAD, IGNORE
    assert targets.tolist() == [[[10, 11], [12, 13], [14, E], [I, I]], [[20, 21], [22, 23], [E, I], [I, I]]]
    assert inputs.tolist() == [
        [[10, 11], [12, 13], [14, P]],
        [[20, 21], [22, 23], [P, P]],
    ]  # position 0 is BOS; position i holds group i-1
    assert n_pos.tolist() == [3, 3]


@pytest.mark.parametrize("G", [1, 4])
def test_ar_causal_padding_and_text(G):
    m, b = ar(G), make_batch()
    ref = ar_logits(m, b)
    # a future audio code: code 9 sits in the input at position 9 // G + 1; earlier positions unchanged
    codes = b["codes"].clone()
    codes[:, 0, 9] = (codes[:, 0, 9] + 1) % 1024
    out = ar_logits(m, b, codes=codes)
    p = 9 // G + 1
    assert torch.allclose(out[:, :p], ref[:, :p], atol=1e-6)
    assert not torch.allclose(out[:, p], ref[:, p], atol=1e-4)
    # padding content (text after text_len, codes after code_len) never reaches real positions
    text, codes = b["text"].clone(), b["codes"].clone()
    text[1, 5:] = 7
    codes[1, :, 11:] = 5
    out = ar_logits(m, b, text=text, codes=codes)
    n_real = 11 // G + 1
    assert torch.allclose(out[1, :n_real], ref[1, :n_real], atol=1e-6)
    # the text conditions the audio
    text = b["text"].clone()
    text[0, 2] = text[0, 2] % (VOCAB - 5) + 4 + 1
    out = ar_logits(m, b, text=text)
    assert not torch.allclose(out[0, :5], ref[0, :5], atol=1e-4)


@pytest.mark.parametrize("G", [1, 2, 8])
def test_ar_kv_cache_matches_forward(G):
    m, b = ar(G), make_batch()
    text = b["text"][:1]
    codes1 = b["codes"][:1, 0]  # (1, 23), all real
    P = 8
    full = m(text, torch.tensor([9]), codes1, torch.tensor([23]))  # (1, N, G, V+1)
    logits, cache = m.prefill(text, codes1[:, :P])
    assert torch.allclose(logits, full[0, P // G], atol=1e-5)
    for i in range(P // G, 23 // G):
        logits, cache = m.decode_step(codes1[0, i * G : (i + 1) * G], cache)
        assert torch.allclose(logits, full[0, i + 1], atol=1e-5), f"group {i}"
    if G > 1:
        with pytest.raises(ValueError, match="multiple of the group size"):
            m.prefill(text, codes1[:, : P + 1])


def test_ar_batched_decoding_matches_one_sample_at_a_time():
    m, b = ar(2), make_batch()
    text, codes1 = b["text"][:1], b["codes"][:1, 0]
    _, cache = m.prefill(text, codes1[:, :4])
    batch = cache.repeat(3)
    steps = torch.stack([codes1[0, 4:6], codes1[0, 6:8], codes1[0, 8:10]])  # (3, G): other codes per row
    logits, batch = m.decode_step(steps, batch)  # (3, G, V+1)
    for row in range(3):
        alone, _ = m.decode_step(steps[row], cache)
        assert torch.allclose(logits[row], alone, atol=1e-5)
    kept = batch.select(torch.tensor([2]))  # rows leave the batch as their samples end
    after, _ = m.decode_step(codes1[0, 10:12][None], kept)
    _, one = m.decode_step(steps[2], cache)
    assert torch.allclose(after[0], m.decode_step(codes1[0, 10:12], one)[0], atol=1e-5)


def test_ar_prefill_without_prompt():
    m, b = ar(2), make_batch()
    full = ar_logits(m, {k: v[:1] for k, v in b.items()})
    logits, cache = m.prefill(b["text"][:1], b["codes"][:1, 0, :0])
    assert torch.allclose(logits, full[0, 0], atol=1e-5) and cache.next_pos == 1


def test_autocast_bf16_cpu():
    m, b = ar(2), make_batch()
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = m.loss(b)
    loss.backward()
    assert torch.isfinite(loss)
    n = nar()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = n.loss(b)
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_cuda():
    b = {k: v.cuda() for k, v in make_batch().items()}
    for m in (ARModel(tiny(VOCAB, group_size=2)), NARModel(tiny(VOCAB))):
        m.cuda().train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, stats = m.loss(b)
        loss.backward()
        assert torch.isfinite(loss) and stats["tokens"].item() > 0
    m = ARModel(tiny(VOCAB, group_size=2)).cuda().eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(ar_logits(m, b)).all()


# ---- NAR ------------------------------------------------------------------------------------
def nar_logits(m, b, stage, prompt, **kw):
    b = {**b, **kw}
    return m(b["text"], b["text_lens"], b["codes"], b["code_lens"], torch.tensor(prompt), torch.tensor(stage))


def test_nar_inputs():
    m, b = nar(), make_batch()
    stage, prompt = [3, 1, 7], [5, 0, 4]
    ref = nar_logits(m, b, stage, prompt)
    assert ref.shape == (3, 23, 1024) and torch.isfinite(ref).all()
    # codebooks >= stage after the prompt, and padding anywhere: not inputs
    codes = b["codes"].clone()
    for i, (s, p) in enumerate(zip(stage, prompt)):
        codes[i, s:, p:] = torch.randint(0, 1024, codes[i, s:, p:].shape)
    codes[1, :, 11:] = 3
    text = b["text"].clone()
    text[1, 5:] = 9
    out = nar_logits(m, b, stage, prompt, codes=codes, text=text)
    real = torch.arange(23)[None] < b["code_lens"][:, None]
    assert torch.allclose(out[real], ref[real], atol=1e-5)
    # a codebook below the stage after the prompt, or any codebook inside the prompt, is an input
    for k, t in [(2, 10), (6, 2)]:  # (codebook, frame) for utterance 0 (stage 3, prompt 5)
        codes = b["codes"].clone()
        codes[0, k, t] = (codes[0, k, t] + 1) % 1024
        assert not torch.allclose(nar_logits(m, b, stage, prompt, codes=codes)[0], ref[0], atol=1e-4)
    # the stage conditions the network
    assert not torch.allclose(nar_logits(m, b, [4, 1, 7], prompt)[0], ref[0], atol=1e-4)


def test_nar_draw_distribution():
    m = nar()  # prompt_seconds (1.5, 10): 112..750 frames, at most 3/4 of the utterance
    L = torch.tensor([1, 8, 100, 1000, 2000] * 500)
    stage, prompt = m.draw(L, torch.Generator().manual_seed(0))
    assert stage.min() == 1 and stage.max() == 7
    hi = torch.clamp(L * 3 // 4, max=750)
    lo = torch.clamp(L * 3 // 4 // 2, max=112)
    assert ((prompt >= lo) & (prompt <= hi)).all() and (prompt < L).all()
    for n in (1000, 2000):  # 1.5-10 s, uniform
        assert 112 <= prompt[L == n].min() <= 116 and 746 <= prompt[L == n].max() <= 750
    assert prompt[L == 100].min() == 37 and prompt[L == 100].max() == 75  # a quarter stays target
    assert set(prompt[L == 8].tolist()) == {3, 4, 5, 6} and set(prompt[L == 1].tolist()) == {0}
    assert set(stage.tolist()) == set(range(1, 8))
    narrow = NARModel(tiny(VOCAB, prompt_seconds=(3.0, 3.0)))
    _, fixed = narrow.draw(torch.tensor([2000] * 50), torch.Generator().manual_seed(0))
    assert set(fixed.tolist()) == {225}


def test_nar_loss_counts_only_frames_after_prompt():
    m, b = nar(), make_batch()
    fixed = torch.randn(3, 23, 1024)
    m.forward = lambda *a: fixed  # isolate the loss's bookkeeping from the network
    seed = 5
    stage, prompt = m.draw(b["code_lens"], torch.Generator().manual_seed(seed))
    loss, stats = m.loss(b, torch.Generator().manual_seed(seed))
    assert stats["tokens"].item() == (b["code_lens"] - prompt).sum().item()
    assert stats["histogram"].shape == (7, 1024) and stats["histogram"].sum().item() == stats["tokens"].item()
    for i in range(3):  # each utterance's targets land in its stage's row
        assert stats["histogram"][stage[i] - 1].sum().item() >= (b["code_lens"][i] - prompt[i]).item()
    codes = b["codes"].clone()  # perturb the targets before T' and after the code length
    for i, (s, p) in enumerate(zip(stage.tolist(), prompt.tolist())):
        codes[i, s, :p] = (codes[i, s, :p] + 1) % 1024
    codes[1, :, 11:] = 0
    loss2, _ = m.loss({**b, "codes": codes}, torch.Generator().manual_seed(seed))
    assert loss2.item() == loss.item()
    s, p = stage[0].item(), prompt[0].item()
    codes[0, s, p] = (codes[0, s, p] + 1) % 1024  # ...but a target at T' counts
    loss3, _ = m.loss({**b, "codes": codes}, torch.Generator().manual_seed(seed))
    assert loss3.item() != loss.item()


def test_nar_predict():
    m, b = nar(), make_batch()
    text, prompt, codes1 = b["text"][:1], b["codes"][:1, :, :6], b["codes"][:1, 0, 6:20]
    out = m.predict(text, prompt, codes1)
    assert out.shape == (8, 14) and out.dtype == torch.long
    assert torch.equal(out[0], codes1[0]) and ((out >= 0) & (out < 1024)).all()
    # stage 1's prediction is the greedy argmax of the forward pass with only codebook 1 known
    full = torch.cat([prompt, torch.zeros(1, 8, 14, dtype=torch.long)], dim=2)
    full[0, 0, 6:] = codes1[0]
    lg = m(text, torch.tensor([9]), full, torch.tensor([20]), torch.tensor([6]), torch.tensor([1]))
    assert torch.equal(out[1], lg[0, 6:].argmax(-1))


# ---- learning smoke test, sizes -------------------------------------------------------------
@pytest.mark.parametrize("which", ["ar1", "ar2", "nar"])
def test_loss_falls_on_a_fixed_batch(which):
    torch.manual_seed(0)
    cfg = tiny(VOCAB, group_size=2 if which == "ar2" else 1)
    m = NARModel(cfg) if which == "nar" else ARModel(cfg)
    b = make_batch(B=2, code_lens=(23, 15), text_lens=(9, 6))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, _ = m.loss(b, g) if which == "nar" else m.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, losses


def test_base_parameter_counts():
    assert set(PRESETS) == {"tiny", "base"}
    text_vocab = 1024
    with torch.device("meta"):
        counts = {
            name: sum(p.numel() for p in m.parameters())
            for name, m in [
                ("AR G=1", ARModel(base(text_vocab))),
                ("AR G=8", ARModel(base(text_vocab, group_size=8))),
                ("NAR", NARModel(base(text_vocab))),
            ]
        }
        ar1 = ARModel(base(text_vocab))
    print({k: f"{v / 1e6:.1f} M" for k, v in counts.items()})
    # 12 blocks x (4 d^2 attention + 8 d^2 FFN) = 151 M; + text/audio embeddings, heads (+ AdaLN)
    assert 150e6 < counts["AR G=1"] < 160e6
    assert 160e6 < counts["AR G=8"] < 175e6  # 8 slot tables + 8-way head
    assert 160e6 < counts["NAR"] < 175e6  # 8 codebook tables + 7 stage heads + AdaLN
    f = ar1.train_flops(torch.tensor([60]), torch.tensor([939]))  # one sequence of 60 + 940 = 1000
    assert 1000 * 6 * 150e6 < f - 12 * 12 * 1024 * 1000**2 < 1000 * 6 * 160e6


@pytest.mark.parametrize("G", [1, 2, 8])
def test_ar_flops_count_group_positions_at_real_lengths(G):
    m = ar(G)
    text, codes = torch.tensor([9, 5]), torch.tensor([23, 11])
    positions = text + codes // G + 1  # BOS + L // G groups (the last holds EOS)
    assert m.positions(text, codes).tolist() == positions.tolist()
    matmul = sum(p.numel() for p in m.transformer.parameters()) + m.head.weight.numel()
    cfg = m.cfg
    expected = 6 * matmul * positions.sum() + 12 * cfg.n_layers * cfg.d_model * (positions.double() ** 2).sum()
    assert m.train_flops(text, codes) == pytest.approx(float(expected))
    # a padded batch costs what its real sequences cost: padding is waste, not work
    assert m.train_flops(torch.tensor([9]), torch.tensor([23])) < m.train_flops(text, codes)
    with torch.device("meta"):  # at base size, frames counted as positions overstate the work ~G-fold
        big, big1 = ARModel(base(VOCAB, group_size=G)), ARModel(base(VOCAB))
    long_text, long_codes = torch.tensor([60] * 4), torch.tensor([1200] * 4)
    ratio = big1.train_flops(long_text, long_codes) / big.train_flops(long_text, long_codes)
    assert ratio > 0.75 * G or G == 1  # (the G-wide head costs a little per position)


def test_nar_predicts_samples_of_several_lengths_as_one_batch():
    m, b = nar(), make_batch()
    text, prompt = b["text"][:1], b["codes"][:1, :, :6]  # (1, S), (1, K, 6)
    continuations = [b["codes"][0, 0, 6 : 6 + n] for n in (9, 4, 13)]
    batch = m.predict_samples(text, prompt, continuations)
    for codes1, got in zip(continuations, batch):
        alone = m.predict(text, prompt, codes1[None])
        assert got.shape == (8, codes1.numel()) and torch.equal(got, alone)
        assert torch.equal(got[0], codes1)
