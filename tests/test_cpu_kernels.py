"""The CPU encoder's layout: FastELU's values, and codes that do not depend on the lanes."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from tokens.codec import CodecEncoder
from tokens.codec_settings import CodecConfig
from tokens.cpu_kernels import FastELU, reflect_pad, use_fast_elu


def waves(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 24000))).astype(np.float32) for s in seconds]


def test_fast_elu_is_elu_within_5e8():
    x = torch.cat(
        [
            torch.linspace(-30, 30, 200_001),
            torch.tensor([0.0, -0.0, -1e-30, -1e-9, -1e-7, 1e-9, -88.0, -104.0, -1e4, 3e38]),
            -torch.logspace(-12, 1, 10_000),
        ]
    )
    exact = nn.functional.elu(x.double())
    fast = FastELU()(x)
    assert fast.dtype == torch.float32
    assert (fast.double() - exact).abs().max() <= 5e-8
    assert torch.equal(fast[x > 0], x[x > 0])  # the positive side untouched


def test_use_fast_elu_swaps_every_alpha_one_elu_and_refuses_others():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ELU(), nn.Sequential(nn.ELU(alpha=1.0), nn.ReLU()))
    assert use_fast_elu(net) == 2
    assert [type(m).__name__ for m in net.modules()].count("FastELU") == 2
    assert not any(type(m) is nn.ELU for m in net.modules())
    with pytest.raises(ValueError, match="alpha 0.5"):
        use_fast_elu(nn.Sequential(nn.ELU(alpha=0.5)))


def test_reflect_pad_is_torchs_bit_for_bit():
    x = torch.randn(2, 3, 50)
    for left, right in [(0, 0), (6, 0), (0, 3), (5, 2), (49, 49)]:
        want = nn.functional.pad(x, (left, right), mode="reflect")
        assert torch.equal(reflect_pad(x, left, right), want), (left, right)
    assert reflect_pad(x, 0, 0) is x  # nothing to pad: no copy


def test_encodecs_cpu_convolutions_give_encodecs_own_values(encoder):
    """on_cpu swaps the padding of every encoder convolution; the encoder's output (before the
    quantizer) is bit for bit that of encodec's own forward, the short inputs included."""
    from tokens.codecs import encodec as backend

    model = encoder._model
    stock = copy.deepcopy(model)
    for module in stock.encoder.modules():
        module.__dict__.pop("forward", None)  # encodec's own SConv1d.forward again
    patched = [m for m in model.encoder.modules() if "forward" in m.__dict__]
    assert len(patched) >= 14 and not [m for m in stock.encoder.modules() if "forward" in m.__dict__]
    backend.on_cpu(stock)
    assert sum("forward" in m.__dict__ for m in stock.encoder.modules()) == len(patched)
    for module in stock.encoder.modules():
        module.__dict__.pop("forward", None)
    with torch.inference_mode():
        for samples in (7 * 320, 8000, 24000 + 320):
            x = torch.randn(1, 1, samples) * 0.1
            assert torch.equal(model.encoder(x), stock.encoder(x)), samples


@pytest.fixture(scope="module")
def encoder():
    enc = CodecEncoder(CodecConfig(weights="random", device="cpu", threads=2))
    enc.setup()
    yield enc
    enc.close()


def test_the_cpu_encoder_runs_fast_elu_in_its_encoder_only(encoder):
    model = encoder._model
    assert not any(type(m) is nn.ELU for m in model.encoder.modules())
    assert sum(type(m) is FastELU for m in model.encoder.modules()) >= 9
    assert any(type(m) is nn.ELU for m in model.decoder.modules())  # decoded audio is not a code


def test_codes_do_not_depend_on_the_lanes_or_on_what_runs_beside_them(encoder):
    ws = waves([2.1, 4.7, 0.05, 3.3, 1.0, 2.8, 4.1], seed=1)
    alone = [encoder.encode([w])[0] for w in ws]  # one call per utterance
    together = encoder.encode(ws)
    one_lane = CodecEncoder(CodecConfig(weights="random", device="cpu", threads=1))
    single = one_lane.encode(ws)
    one_lane.close()
    with ThreadPoolExecutor(3) as callers:  # calls at once, sharing the lanes
        concurrent = list(callers.map(lambda w: encoder.encode([w])[0], ws))
    for i, codes in enumerate(alone):
        assert codes.shape == (8, -(-len(ws[i]) // 320))
        for other in (together, single, concurrent):
            np.testing.assert_array_equal(other[i], codes, err_msg=f"utterance {i}")
    assert encoder.cpu_pass == "one utterance, 1 thread, FastELU"
    assert torch.get_num_threads() >= 1  # the caller's own thread count is left alone


def test_fast_elu_codes_are_the_stock_elu_codes_but_for_near_ties(encoder):
    """A stack change, not a different codec: with random weights (near-ties are common) at
    least 99 % of the codes are those of torch's own ELU."""
    ws = waves([3.0, 4.0, 2.5], seed=2)
    stock = copy.deepcopy(encoder._model)
    for parent in stock.encoder.modules():
        for name, child in parent.named_children():
            if type(child) is FastELU:
                setattr(parent, name, nn.ELU())

    def stock_codes(w):
        with torch.inference_mode():
            emb = stock.encoder(torch.from_numpy(np.pad(w, (0, -len(w) % 320)))[None, None])
            return stock.quantizer.encode(emb, stock.frame_rate, stock.bandwidth)[:, 0].numpy()

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as one_thread:
        reference = list(one_thread.map(stock_codes, ws))
    ours = encoder.encode(ws)
    same = sum((a == b).sum() for a, b in zip(ours, reference))
    total = sum(a.size for a in ours)
    assert total > 2000 and same / total >= 0.99
