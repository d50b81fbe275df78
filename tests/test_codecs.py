"""DAC 24 kHz and Mimi backends (transformers' DacModel and MimiModel) on CPU with seeded random
weights: exact batched codes, the library's own encode, codebooks, weights and their refusals.

EnCodec's are in tests/test_codec.py. Audio is a few seconds of noise; each model loads twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import sys
import time

import numpy as np
import pytest
import torch

from tokens import codec_weights
from tokens.codec import CodecEncoder
from tokens.codec_settings import CodecConfig
from tokens.codecs import backend, dac, spec

# Samples of mixed lengths, by hop (DAC 320, Mimi 1,920): whole frames, one frame, and lengths
# that are not a multiple of the hop (1 sample past a frame, 1 short of one, in between).
LENGTHS = {
    "dac_24khz": [4800, 320, 2401, 2000, 1599, 640, 3200],
    "mimi": [13440, 1920, 5761, 5000, 3839, 3840],
}


def waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def config(name: str, **kw) -> CodecConfig:
    return CodecConfig(**{"name": name, "weights": "random", "device": "cpu", "batch_seconds": 30.0, **kw})


@pytest.fixture(scope="module", params=["dac_24khz", "mimi"])
def codec(request):
    """(name, state dict and weights resolved once, an encoder built from them)."""
    name = request.param
    state, weights = codec_weights.resolve_weights(config(name))
    encoder = CodecEncoder(config(name), (state, weights))
    encoder.setup()
    return name, (state, weights), encoder


def test_batched_codes_equal_one_by_one_and_the_librarys_encode(codec, monkeypatch):
    name, _, encoder = codec
    hop, k = spec(name).hop, encoder.n_q
    ws = waves(LENGTHS[name])
    before = encoder.forward_passes
    together = encoder.encode(ws)
    assert encoder.forward_passes == before + 1  # all in one padded batch
    alone = [encoder.encode([w])[0] for w in ws]
    for w, a, b in zip(ws, together, alone):
        assert a.dtype == np.uint16 and a.shape == (k, -(-len(w) // hop))
        np.testing.assert_array_equal(a, b)

    model = encoder._model
    with torch.inference_mode():
        for w, a in zip(ws, together):
            if len(w) % hop:
                continue
            x = torch.from_numpy(w)[None, None]
            if name == "dac_24khz":
                reference = model.encode(x, n_quantizers=k).audio_codes
            else:
                reference = model.encode(x, num_quantizers=k).audio_codes
            np.testing.assert_array_equal(a, reference[0].numpy())

    if name == "dac_24khz":  # its encoder is not causal: without the mask, what the batch padding
        # became after a layer reaches the short rows' last frames (the longest row has none)
        with monkeypatch.context() as m:
            m.setattr(dac, "_masked", lambda *args: contextlib.nullcontext())
            unmasked = encoder.encode(ws)
        np.testing.assert_array_equal(unmasked[0], alone[0])
        assert any(not np.array_equal(a, b) for a, b in zip(unmasked[1:], alone[1:]))


def test_random_weights_are_seeded_and_round_trip_through_their_state(codec):
    name, (state, weights), encoder = codec
    # Built again at another thread count: float32 sums change with it, the weights must not (a
    # run's codec workers and valle-synth load "random" in processes of their own thread counts).
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        again = CodecEncoder(config(name))  # loads (builds and fits) the random model again
        again.setup()
    finally:
        torch.set_num_threads(threads)
    assert weights.kind == again.weights.kind == "random"
    assert weights.sha256 == again.weights.sha256 == codec_weights.state_dict_sha256(state)
    ws = waves(LENGTHS[name], seed=1)
    for a, b in zip(again.encode(ws), encoder.encode(ws)):
        np.testing.assert_array_equal(a, b)

    bad = dataclasses.replace(weights, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="damaged"):
        codec_weights.model_from_state(state, bad, config(name))


def test_random_codes_vary_and_decode_to_whole_frames(codec):
    name, _, encoder = codec
    s = spec(name)
    (codes,) = encoder.encode(waves([(2 if name == "dac_24khz" else 4) * s.sample_rate], seed=2))
    first = codes[0]
    assert len(np.unique(first)) >= 0.5 * min(len(first), 100), f"{name}: codebook 1 barely varies"
    assert codes.max() < s.codebook_size
    if name == "mimi":
        assert codes.max() > 1023  # its 2,048 entries are reached, not only EnCodec's 1,024
    wave = encoder.decode(codes[:, :5])
    assert wave.dtype == np.float32 and wave.shape == (5 * s.hop,)


def test_codebooks_selects_how_many_and_they_are_a_prefix(codec):
    name, resolved, encoder = codec
    k = {"dac_24khz": 12, "mimi": 4}[name]
    ws = waves(LENGTHS[name][:3], seed=3)
    default = encoder.encode(ws)
    other = CodecEncoder(config(name, codebooks=k), resolved)
    for a, b in zip(other.encode(ws), default):
        assert a.shape == (k, b.shape[1])
        n = min(k, b.shape[0])
        np.testing.assert_array_equal(a[:n], b[:n])  # residual quantization: the first n agree


def problems(cfg: CodecConfig) -> dict:
    return dict(cfg.problems())


def test_settings_that_are_not_the_codecs_are_problems():
    assert problems(config("mimi", codebooks=32)) == {} == problems(config("dac_24khz", codebooks=1))
    assert "1..32 for mimi" in problems(config("mimi", codebooks=33))["codebooks"]
    assert "codebooks" in problems(config("dac_24khz", codebooks=0))
    assert "EnCodec's setting" in problems(config("mimi", bandwidth=3.0))["bandwidth"]
    assert "EnCodec's" in problems(config("dac_24khz", weights_url="https://example.org/w.th"))["weights_url"]


def test_a_folder_of_another_codec_or_other_numbers_is_refused(tmp_path):
    from transformers import DacConfig, MimiConfig

    # The config is what is checked, before any weights are read: save_pretrained's config.json.
    MimiConfig().save_pretrained(tmp_path / "mimi")
    with pytest.raises(ValueError) as err:
        codec_weights.load_model(config("dac_24khz", weights=str(tmp_path / "mimi")))
    assert "'mimi' model" in str(err.value) and "not dac_24khz" in str(err.value)

    other = DacConfig(**{**dac.CONFIG.to_dict(), "sampling_rate": 16000})
    other.save_pretrained(tmp_path / "dac16")
    with pytest.raises(ValueError, match="sampling_rate 16000 .expected 24000"):
        codec_weights.load_model(config("dac_24khz", weights=str(tmp_path / "dac16")))


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections to it are refused


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def use_hub(monkeypatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@contextlib.contextmanager
def local_hub(repo: str, folder, requests: list):
    """A model hub look-alike on 127.0.0.1 serving `folder`'s files as `repo` at commit COMMIT
    (HEAD and GET of /<repo>/resolve/main/<file>, with the headers huggingface_hub reads); every
    request lands in `requests`. Yields its address."""
    import hashlib
    import http.server
    import threading

    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    prefix = f"/{repo}/resolve/main/"

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _headers(self):
            requests.append(self.path)
            name = self.path.split("?")[0].removeprefix(prefix)
            body = files.get(name) if self.path.startswith(prefix) else None
            self.send_response(200 if body is not None else 404)
            if body is None:
                self.send_header("X-Error-Code", "EntryNotFound")
            else:
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            return body

        def do_HEAD(self):
            self._headers()

        def do_GET(self):
            body = self._headers()
            if body is not None:
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_pretrained_comes_from_the_hub_once_then_from_the_cache(tmp_path, monkeypatch):
    """ "pretrained" downloads the hub repo's files into the cache (here from a local look-alike of
    the hub serving a saved DAC), records the commit and the safetensors file's sha256, and loads
    from the cache without the hub afterwards; another model in the repo is refused."""
    from tokens.codecs import hub, mimi

    served = tmp_path / "served"
    hub.random_model(dac.CODEC).save_pretrained(served)
    cfg = config("dac_24khz", weights="pretrained", cache_dir=str(tmp_path / "cache"))
    requests = []
    with local_hub("descript/dac_24khz", served, requests) as endpoint:
        use_hub(monkeypatch, endpoint)
        _, weights = backend("dac_24khz").load(cfg)
    assert any(r.endswith("/model.safetensors") for r in requests)
    random = backend("dac_24khz").load(config("dac_24khz"))[1]
    assert (weights.kind, weights.sha256) == ("pretrained", random.sha256)  # the served weights
    assert weights.source == f"https://huggingface.co/descript/dac_24khz @ {COMMIT}"
    assert weights.file_sha256 == codec_weights.sha256_file(served / "model.safetensors")

    use_hub(monkeypatch, f"http://127.0.0.1:{refused_port()}")  # the hub is gone: the cache serves
    assert backend("dac_24khz").load(cfg)[1] == weights

    other = tmp_path / "mimi"
    hub.random_model(mimi.CODEC).save_pretrained(other)
    with local_hub("descript/dac_24khz", other, []) as endpoint:
        use_hub(monkeypatch, endpoint)
        fresh = dataclasses.replace(cfg, cache_dir=str(tmp_path / "cache2"))
        with pytest.raises(ValueError, match="the hub repo descript/dac_24khz holds a 'mimi' model, not dac_24khz"):
            backend("dac_24khz").load(fresh)


def test_auto_without_the_hub_falls_back_to_random_at_once(tmp_path, monkeypatch, caplog):
    """Offline, "auto" makes one quick try: the hub's retries (5, 23 s of waits) are for downloads."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{refused_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    cfg = dataclasses.replace(config("dac_24khz"), weights="auto", cache_dir=str(tmp_path))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        model, weights = backend("dac_24khz").load(cfg)
    assert time.monotonic() - started < 15  # the random model's build included
    assert weights.kind == "random" and "RANDOM-INIT" in caplog.text and "descript/dac_24khz" in caplog.text
    assert not any("Retrying" in r.getMessage() for r in caplog.records)


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    monkeypatch.delitem(sys.modules, "tokens.codecs.mimi", raising=False)
    with pytest.raises(ImportError, match=r"'mimi' needs transformers .*pip install 'valle-corpus\[codecs\]'"):
        backend("mimi")
