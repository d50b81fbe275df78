"""EnCodec stage: exact batched codes, deterministic random weights, and weight provenance.

Everything runs on CPU with random-init weights (the real checkpoint cannot be downloaded here);
the pretrained path is exercised against a local HTTP server serving a saved random state dict.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from sample.http_mirror import HttpMirror
from tokens.codec import CodecEncoder
from tokens.codec_settings import MIN_FRAMES, CodecConfig, num_codebooks, num_frames
from tokens.codec_weights import WeightsUnavailable, resolve_weights, state_dict_sha256
from tokens.codecs import SPECS

ENCODEC = SPECS["encodec_24khz"]

# Lengths around frame edges and below MIN_FRAMES frames (where reflect padding peeks ahead).
LENGTHS = [16000, 321, 319, 2500, 8345, MIN_FRAMES * ENCODEC.hop, 1, 640, 6400, 0]


def waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


@pytest.fixture(scope="module")
def random_state():
    state, weights = resolve_weights(CodecConfig(weights="random"))
    return state, weights


@pytest.fixture(scope="module")
def encoder():
    enc = CodecEncoder(CodecConfig(weights="random", device="cpu", batch_seconds=0.7))
    enc.setup()
    return enc


@pytest.fixture
def site(tmp_path, random_state):
    """A folder holding a random-init state dict as `ckpt.th`, and that file's sha256."""
    folder = tmp_path / "site"
    folder.mkdir()
    torch.save(random_state[0], folder / "ckpt.th")
    return folder, hashlib.sha256((folder / "ckpt.th").read_bytes()).hexdigest()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frame_and_codebook_arithmetic():
    assert [num_frames(n) for n in (0, 1, 319, 320, 321, 24000)] == [0, 1, 1, 1, 2, 75]
    assert [num_codebooks(b) for b in (1.5, 3.0, 6.0, 12.0, 24.0)] == [2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="bandwidth 5.0"):
        num_codebooks(5.0)


def test_batched_codes_equal_one_by_one_exactly(encoder):
    before = encoder.forward_passes
    batched = encoder.encode(waves(LENGTHS))
    # Padded lengths (whole frames, >= MIN_FRAMES) grouped so that longest x count <= 0.7 s =
    # 16800 samples: 16000 | 8640 | 6400 + 2560 | 5 x 2240 -> 4 passes.
    assert encoder.forward_passes - before == 4
    one_by_one = [encoder.encode([w])[0] for w in waves(LENGTHS)]
    assert encoder.forward_passes - before == 4 + 9  # the empty wave needs no forward pass
    for n, b, o in zip(LENGTHS, batched, one_by_one):
        assert b.dtype == np.uint16 and b.shape == (8, num_frames(n)) == o.shape
        np.testing.assert_array_equal(b, o, err_msg=f"length {n}")
        assert b.size == 0 or b.max() < 1024
    # The codes vary, so equality means something (encodec's own init makes every code 0).
    assert len(np.unique(batched[0])) > 100


def test_order_is_preserved(encoder):
    ws = waves(LENGTHS[:5], seed=1)
    perm = [3, 0, 4, 2, 1]
    codes = encoder.encode(ws)
    permuted = encoder.encode([ws[i] for i in perm])
    for got, i in zip(permuted, perm):
        np.testing.assert_array_equal(got, codes[i])


def test_whole_frame_utterances_match_encodec_itself(encoder):
    """The encodec package's own `encode`, on the same network (FastELU in its encoder, as on
    every CPU) and on one thread, as each CPU lane runs."""
    (w,) = waves([30 * ENCODEC.hop], seed=2)

    def native():
        with torch.inference_mode():
            return encoder._model.encode(torch.from_numpy(w)[None, None])[0][0][0].numpy()

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as one_thread:
        np.testing.assert_array_equal(encoder.encode([w])[0], one_thread.submit(native).result())


def test_random_weights_are_the_same_in_every_instance_and_process(encoder, random_state):
    other = CodecEncoder(CodecConfig(weights="random", device="cpu"))
    other.setup()
    assert other.weights == encoder.weights == random_state[1]
    assert encoder.weights.kind == "random" and encoder.weights.file_sha256 is None
    ws = waves([3000, 5000], seed=3)
    for a, b in zip(encoder.encode(ws), other.encode(ws)):
        np.testing.assert_array_equal(a, b)
    assert not any(t.is_inference() for t in random_state[0].values())  # usable outside it
    # Another process, with another thread count (float32 reductions depend on it).
    script = (
        "import torch; torch.set_num_threads(1); "
        "from tokens.codec_settings import CodecConfig; from tokens.codec_weights import resolve_weights; "
        "print(resolve_weights(CodecConfig(weights='random'))[1].sha256)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == random_state[1].sha256


def test_encoder_pickles_without_its_model(encoder):
    fresh = pickle.loads(pickle.dumps(CodecEncoder(CodecConfig(weights="random"))))
    assert fresh._model is None
    shipped = pickle.loads(pickle.dumps(encoder))
    assert shipped._model is None and shipped.weights is None and shipped.cfg == encoder.cfg


def test_bad_waveform_is_named(encoder):
    with pytest.raises(ValueError, match=r"waves\[1\].*shape \(2, 100\)"):
        encoder.encode([np.zeros(100, np.float32), np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match=r"waves\[0\].*int16"):
        encoder.encode([np.zeros(100, np.int16)])


def test_pretrained_downloads_verifies_and_loads(tmp_path, site, random_state, encoder):
    folder, digest = site
    with HttpMirror(folder) as mirror:
        cfg = CodecConfig(
            weights="pretrained",
            device="cpu",
            weights_url=mirror.url("ckpt.th"),
            weights_checksum=f"sha256:{digest}",
            cache_dir=str(tmp_path / "cache"),
        )
        enc = CodecEncoder(cfg)
        enc.setup()
        assert enc.weights.kind == "pretrained" and enc.weights.source == cfg.weights_url
        assert enc.weights.file_sha256 == digest
        assert enc.weights.sha256 == state_dict_sha256(random_state[0]) == random_state[1].sha256
        assert (tmp_path / "cache" / "encodec" / "ckpt.th").is_file()
        (w,) = waves([7000], seed=4)
        np.testing.assert_array_equal(enc.encode([w])[0], encoder.encode([w])[0])
        # A second encoder finds it in the cache: no new request.
        requests = len(mirror.requests)
        assert resolve_weights(cfg)[1] == enc.weights
        assert len(mirror.requests) == requests


def test_pretrained_with_wrong_checksum_fails_clearly(tmp_path, site):
    folder, _ = site
    with HttpMirror(folder) as mirror:
        cfg = CodecConfig(
            weights="pretrained",
            weights_url=mirror.url("ckpt.th"),
            weights_checksum="sha256:" + "0" * 64,
            cache_dir=str(tmp_path / "c"),
            download_retries=1,
        )
        with pytest.raises(WeightsUnavailable, match="cannot obtain the pretrained.*mismatch"):
            resolve_weights(cfg)


def test_without_checksum_the_prefix_in_the_file_name_is_checked(tmp_path, site):
    folder, digest = site
    (folder / f"ckpt-{digest[:8]}.th").write_bytes((folder / "ckpt.th").read_bytes())
    (folder / "ckpt-00000000.th").write_bytes((folder / "ckpt.th").read_bytes())
    with HttpMirror(folder) as mirror:
        cfg = CodecConfig(
            weights="pretrained",
            weights_checksum=None,
            cache_dir=str(tmp_path / "c"),
            weights_url=mirror.url(f"ckpt-{digest[:8]}.th"),
        )
        assert resolve_weights(cfg)[1].file_sha256 == digest
        cfg.weights_url = mirror.url("ckpt-00000000.th")
        with pytest.raises(WeightsUnavailable, match="does not match"):
            resolve_weights(cfg)


def test_pretrained_unreachable_fails_with_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/encodec_24khz-d7cc33bc.th"
    cfg = CodecConfig(weights="pretrained", weights_url=url, cache_dir=str(tmp_path), download_retries=1)
    with pytest.raises(
        WeightsUnavailable,
        match="cannot obtain the pretrained EnCodec 24 kHz "
        "checkpoint from URL .*put the file at .*encodec_24khz-d7cc33bc.th",
    ):
        resolve_weights(cfg)


def test_a_file_put_in_the_cache_by_hand_is_used_offline(tmp_path, site, random_state):
    folder, digest = site
    (tmp_path / "encodec").mkdir()
    (tmp_path / "encodec" / "ckpt.th").write_bytes((folder / "ckpt.th").read_bytes())
    cfg = CodecConfig(
        weights="pretrained",
        weights_url=f"http://127.0.0.1:{unused_port()}/ckpt.th",
        weights_checksum=f"sha256:{digest}",
        cache_dir=str(tmp_path),
        download_retries=1,
    )
    assert resolve_weights(cfg)[1].sha256 == random_state[1].sha256


def test_auto_falls_back_to_random_loudly(tmp_path, caplog, random_state):
    cfg = CodecConfig(
        weights="auto",
        weights_url=f"http://127.0.0.1:{unused_port()}/x.th",
        cache_dir=str(tmp_path),
        download_retries=1,
    )
    with caplog.at_level(logging.WARNING, logger="tokens.codec_weights"):
        _, weights = resolve_weights(cfg)
    assert weights == random_state[1] and weights.kind == "random"
    assert "MEANINGLESS" in caplog.text and "kind='random'" in caplog.text


def test_local_checkpoint_loads(site, random_state):
    folder, digest = site
    _, weights = resolve_weights(CodecConfig(weights=str(folder / "ckpt.th")))
    assert weights.kind == "checkpoint" and weights.source == str((folder / "ckpt.th").resolve())
    assert weights.sha256 == random_state[1].sha256 and weights.file_sha256 == digest


def test_files_that_are_not_encodec_state_dicts_fail_clearly(tmp_path, random_state):
    garbage, not_dict, wrong = tmp_path / "garbage.th", tmp_path / "list.th", tmp_path / "wrong.th"
    garbage.write_bytes(b"not a checkpoint at all")
    torch.save([torch.zeros(3)], not_dict)
    state = dict(random_state[0])
    state["encoder.model.0.conv.conv.bias"] = torch.zeros(7)
    torch.save(state, wrong)
    cases = {
        tmp_path / "missing.th": "does not exist",
        garbage: "cannot be read as a tensor state dict",
        not_dict: "holds a list, not a state dict",
        wrong: "is not an EnCodec 24 kHz state dict.*size mismatch",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            resolve_weights(CodecConfig(weights=str(path)))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="bandwidth 7.0"):
        CodecEncoder(CodecConfig(bandwidth=7.0))
    enc = CodecEncoder(CodecConfig(weights="random", device="tpu"))
    with pytest.raises(ValueError, match="codec.device 'tpu'"):
        enc.setup()


def test_cuda_kernel_settings_last_as_long_as_the_block():
    from tokens.codec import cuda_kernels, kernel_settings

    before = kernel_settings()
    with pytest.raises(RuntimeError, match="in the block"):
        with cuda_kernels(benchmark=True, deterministic=True, tf32=True):
            assert kernel_settings() == {
                "cudnn.benchmark": True,
                "cudnn.deterministic": True,
                "cudnn.allow_tf32": True,
                "float32_matmul_precision": "high",
            }
            assert torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("in the block")
    assert kernel_settings() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_codec_sets_its_cuda_kernels_for_its_own_calls_only(random_state):
    """Deterministic cuDNN without TF32 while the exact mode encodes and decodes; the process's
    own settings (a trainer's, a synthesizer's) before and after."""
    from tokens.codec import kernel_settings

    before = kernel_settings()
    encoder = CodecEncoder(CodecConfig(weights="random", device="cuda"), random_state)
    encoder.setup()
    seen = []
    encoder._model.encoder.register_forward_hook(lambda *_: seen.append(kernel_settings()))
    codes = encoder.encode(waves([16000]))
    assert kernel_settings() == before
    encoder.decode(codes[0])
    assert kernel_settings() == before
    assert seen == [
        {
            **before,
            "cudnn.benchmark": False,
            "cudnn.deterministic": True,
            "cudnn.allow_tf32": False,
            "float32_matmul_precision": "highest",
        }
    ]
