"""A codec (EnCodec 24 kHz at 6 kbps by default): mono waveforms in, codes out, and back.

In:  float32 mono waveforms at the codec's sample rate (1-D numpy arrays, any lengths).
Out: one uint16 array per waveform, shape (codebooks, ceil(len / hop)), values below the codec's
     codebook size, in input order; `decode` turns codes back into a waveform.
`CodecEncoder` does the batching, the device and the numerical mode for every codec; the model
itself is a backend in tokens.codecs (one module per codec). Settings and numbers are in
tokens.codec_settings (no torch), the weights in tokens.codec_weights; `codec_for` builds the
codec a corpus's provenance names (listen, synth).

The rest of this docstring is EnCodec's (the other backends say what their codes are).

What the codes are, exactly: each utterance is zero-padded at the end to whole frames (a multiple
of 320 samples, and at least MIN_FRAMES frames), encoded, and trimmed to ceil(len / 320) frames.
The model is causal except for one detail: its convolutions pad on the left by *reflection*, so
the first outputs of a layer peek up to `kernel - 1` steps ahead. Within an utterance of at least
MIN_FRAMES frames that peek stays inside the utterance's own (padded) samples, so what follows it
in a batch cannot change its codes: batched codes equal one-by-one codes bit for bit. For an
utterance of MIN_FRAMES frames or more whose length is a multiple of 320, they also equal
`EncodecModel.encode` of the same network on that waveform alone (otherwise encodec pads the end
by reflection instead of zeros, which may change the last frame); on CPU, of the network with
FastELU on one thread, as the CPU lanes run it (below).
Caveat: float32 kernels are chosen by shape (the LSTM's recurrent step is a matrix-vector
product at batch 1 and a matrix product above; oneDNN convolutions at some thread counts), so
a latent that sits on a near-tie between two codebook entries can round to a different code
in another batch, or with another thread count. The batches of a given list of waves are
deterministic, so re-encoding the same unit with the same settings on the same kind of
machine gives the same codes.
Out of device memory, a batch is split in two, down to one utterance (`_split`): the halves'
codes are those of smaller batches, so they follow the caveat above and this is all that is
guaranteed. Measured on CPU (random weights, 8 utterances, 4,128 codes): in the exact mode,
splits down to two utterances gave the unsplit batch's codes exactly; down to one, 8 codes
differed (the LSTM's matrix-vector step); in bf16 11 % differed at one utterance. On a GPU,
cuDNN picks kernels by shape, so any split may change a near-tie (bench/gpu_check.py measures
it). Since memory pressure decides when a split happens, every split is counted (`oom_splits`,
in the run's summary) and logged.

On CPU the encoder runs in lanes: `threads` Python threads, each running one forward pass at a
time on one torch thread, one utterance per pass by default. That layout was the fastest
measured on CPU (docs/benchmarks.md), and it makes an utterance's codes depend on nothing but its
own samples and the machine's kernels: not on the lane count, the worker count or what else is
encoded at the same time. Its encoder network's ELUs run as tokens.cpu_kernels.FastELU (float32,
within 5e-8 of the exact function; torch's own ELU kernel was 45 % of the time), and a backend
may swap in faster kernels of the same values (`on_cpu`: EnCodec's padding). The pass is named
in the compute stack (`cpu_pass`), so a corpus whose codes came from another CPU pass is not
mixed with these.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from tokens import codec_weights
from tokens.codec_settings import DEFAULT_CODEC, PRECISIONS, CodecConfig, CodecWeights, batch_seconds, codebooks_of
from tokens.codecs import backend, spec
from tokens.cpu_kernels import use_fast_elu

log = logging.getLogger(__name__)


class CodecMismatch(ValueError):
    """Weights other than those a corpus was encoded with; the message says which to pass."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"codec.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"codec.device={name!r} but CUDA is not available here; use auto or cpu")
    return device


def _batches(lengths: list[int], max_samples: int) -> list[list[int]]:
    """Group indices, longest first, so that padded length x count <= max_samples (>= 1 each)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        # The first (longest) member sets the padded length of its batch.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class PreparedBatches:
    """Waveforms padded into host tensors (pinned for a GPU), ready for `CodecEncoder.run`."""

    lengths: list[int]  # samples of each input waveform, in input order
    batches: list[tuple[list[int], torch.Tensor]]  # (input indices, (B, 1, T) float32 host tensor)


class CodecEncoder:
    """Encodes batches of waveforms; cheap to build and to pickle, `setup()` loads the model.

    `given`: (state dict, CodecWeights) already resolved elsewhere (the driver, through Ray's
    object store), used instead of loading or downloading the weights again; its hash is checked.
    Encoding is two steps so that a worker can overlap them: `prepare` (host: pad into batches,
    pinned memory on a GPU) and `run` (device: copy in without blocking, forward, codes out).
    On a GPU `run` is not thread-safe: one caller at a time (CodecWorker holds a lock around it).
    On CPU callers share the lanes (`cfg.threads` of them; null: one per core), and any number
    may call `run` at once.
    """

    def __init__(self, cfg: CodecConfig, given: tuple[dict, CodecWeights] | None = None):
        self.cfg = cfg
        self.spec = spec(cfg.name)  # fail early on an unknown codec
        self.n_q = codebooks_of(cfg)  # or a bad bandwidth
        if cfg.batch_seconds is not None and cfg.batch_seconds <= 0:
            raise ValueError(f"codec.batch_seconds must be > 0, got {cfg.batch_seconds}")
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"codec.precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}")
        self.weights: CodecWeights | None = None
        self.forward_passes = 0
        self.oom_splits = 0
        self._given = given
        self._model = None
        self._backend = None
        self._device: torch.device | None = None
        self._lanes: ThreadPoolExecutor | None = None  # CPU only
        self._count_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Ship the config, not the model: the receiving worker calls setup() itself.
        skip = ("_model", "_backend", "_device", "weights", "_given", "_lanes", "_count_lock")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _model=None, _backend=None, _device=None, weights=None, _given=None, _lanes=None)
        self._count_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        self.setup()
        return self._device

    def setup(self) -> None:
        if self._model is not None:
            return
        device = _device(self.cfg.device)
        if device.type == "cuda" and self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)  # host-side ops
        if device.type != "cuda" and self.cfg.precision == "tf32":
            log.warning("codec.precision=tf32 only changes CUDA kernels; on %s the codes are exact", device)
        if self._given is not None:
            model, self.weights = codec_weights.model_from_state(*self._given, self.cfg)
            self._given = None  # the model holds its own copy now
        else:
            model, self.weights = codec_weights.load_model(self.cfg)
        self._backend = backend(self.cfg.name)
        if device.type == "cpu":
            use_fast_elu(model.encoder)  # the decoder keeps torch's ELU: its audio is not a code
            if hasattr(self._backend, "on_cpu"):  # a codec's own CPU speed-ups, same values
                self._backend.on_cpu(model)
            lanes = self.cfg.threads or len(os.sched_getaffinity(0))
            # torch's thread count is per calling thread: each lane runs its passes on one.
            self._lanes = ThreadPoolExecutor(lanes, "codec-lane", initializer=torch.set_num_threads, initargs=(1,))
        self._model, self._device = model.to(device).eval(), device
        log.info(
            "%s on %s (%s): %s weights sha256=%s (%s)",
            self.spec.name,
            device,
            self.cfg.precision,
            self.weights.kind,
            self.weights.sha256,
            self.weights.source,
        )

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """float32 mono waveforms at the codec's rate -> uint16 codes (n_q, frames), same order."""
        return self.run(self.prepare(waves))

    def prepare(self, waves: list[np.ndarray]) -> PreparedBatches:
        """Host work: check the waveforms and pad them, longest first, into batches."""
        self.setup()
        waves = [_as_wave(w, i, self.spec.sample_rate) for i, w in enumerate(waves)]
        lengths = [len(w) for w in waves]
        padded = [self._padded(n) for n in lengths]
        todo = [i for i, n in enumerate(lengths) if n > 0]
        max_samples = int(batch_seconds(self.cfg, self._device.type) * self.spec.sample_rate)
        pin = self._device.type == "cuda"  # page-locked, so the copy to the GPU need not block
        batches = []
        for group in _batches([padded[i] for i in todo], max_samples):
            rows = [todo[j] for j in group]
            x = torch.zeros((len(rows), 1, padded[rows[0]]), dtype=torch.float32, pin_memory=pin)
            view = x.numpy()  # (B, 1, T), zero tail
            for row, i in enumerate(rows):
                view[row, 0, : lengths[i]] = waves[i]
            batches.append((rows, x))
        return PreparedBatches(lengths, batches)

    @property
    def cpu_pass(self) -> str:
        """How each CPU forward pass runs, in words (the compute stack records it): its codes
        depend on it, never on the lane count."""
        seconds = batch_seconds(self.cfg, "cpu")
        batch = f"{seconds:g} s batches" if seconds else "one utterance"
        return f"{batch}, 1 thread, FastELU"

    def close(self) -> None:
        """Stop the CPU lanes: a later `run` fails."""
        if self._lanes is not None:
            self._lanes.shutdown()

    def _padded(self, num_samples: int) -> int:
        """An utterance's samples once zero-padded to whole frames, and to the codec's minimum."""
        return max(self.spec.num_frames(num_samples), self.spec.min_frames) * self.spec.hop

    def run(self, prepared: PreparedBatches) -> list[np.ndarray]:
        """Device work: every batch is queued without waiting, then the codes come back at once.
        On CPU the batches are spread over the lanes, longest first (prepare's order), so that
        the lanes finish close together."""
        self.setup()
        out: list[np.ndarray | None] = [
            np.zeros((self.n_q, 0), np.uint16) if n == 0 else None for n in prepared.lengths
        ]

        def queue(batch: tuple[list[int], torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
            rows, x = batch
            with torch.inference_mode(), self._kernels():  # inference mode is per thread
                return self._queue(rows, x, [self._padded(prepared.lengths[i]) for i in rows])

        if self._lanes is not None:
            pending = [part for parts in self._lanes.map(queue, prepared.batches) for part in parts]
        else:
            pending = [part for batch in prepared.batches for part in queue(batch)]
            if self._device.type == "cuda":
                torch.cuda.current_stream(self._device).synchronize()
        for rows, host in pending:
            codes = host.numpy().view(np.uint16)
            for row, i in enumerate(rows):
                out[i] = codes[row, :, : self.spec.num_frames(prepared.lengths[i])].copy()
        return out

    def _queue(self, rows: list[int], x: torch.Tensor, sizes: list[int]) -> list[tuple[list[int], torch.Tensor]]:
        """One batch's forward pass queued, its codes on their way to host memory. `sizes`: each
        row's padded samples. Out of device memory, the batch is split in two (`_split`), down to
        one utterance."""
        try:
            codes = self._forward(x.to(self._device, non_blocking=True), sizes)  # (B, n_q, T / hop)
        except torch.cuda.OutOfMemoryError:
            if len(rows) == 1:
                raise
            codes = None
        if codes is None:
            # Retried here, not in the handler: while it runs, the exception's traceback holds
            # the failed attempt's frames and their activations, which no cache flush can free.
            return self._split(rows, x, sizes)
        # Codes are < 65,536: int16 (read back as uint16) halves the bytes copied back of int32.
        host = torch.empty(codes.shape, dtype=torch.int16, pin_memory=self._device.type == "cuda")
        host.copy_(codes.to(torch.int16), non_blocking=True)
        with self._count_lock:  # CPU lanes count at once
            self.forward_passes += 1
        return [(rows, host)]

    def _split(self, rows: list[int], x: torch.Tensor, sizes: list[int]) -> list[tuple[list[int], torch.Tensor]]:
        """A batch that ran out of device memory, as two halves once the cache is freed; counted
        in `oom_splits` (the halves' codes: see the module's docstring)."""
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        with self._count_lock:
            self.oom_splits += 1
        half = len(rows) // 2
        log.warning(
            "%s on %s: out of memory for %d utterances; trying them as %d and %d",
            self.spec.name,
            self._device,
            len(rows),
            half,
            len(rows) - half,
        )
        return self._queue(rows[:half], x[:half], sizes[:half]) + self._queue(rows[half:], x[half:], sizes[half:])

    def _kernels(self) -> contextlib.AbstractContextManager:
        """The codec's CUDA kernel settings, for its own device work only: per-shape autotuning
        would make the numbers depend on the batch, and TF32 is the `tf32` mode's alone. They are
        process-wide, so they are restored after each call: a process that also trains or
        synthesizes (valle-synth, bench/gpu_check.py, the local executor's driver) keeps its own."""
        if self._device.type != "cuda":
            return contextlib.nullcontext()
        return cuda_kernels(benchmark=False, deterministic=True, tf32=self.cfg.precision == "tf32")

    def _forward(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """(B, 1, T) -> (B, n_q, T / hop) codes by the codec's backend, its encoder network under
        autocast in bf16 mode (quantizers stay in float32)."""
        autocast = (
            torch.autocast(self._device.type, dtype=torch.bfloat16)
            if self.cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        return self._backend.encode(self._model, x, sizes, self.n_q, autocast)

    def codebooks(self) -> torch.Tensor:
        """(n_q * 1024, 128) float32 on the CPU: the codebook entries of the codes' n_q codebooks,
        stacked (what a Vocos decoder embeds codes with). EnCodec's only."""
        self.setup()
        if self.cfg.name != DEFAULT_CODEC:
            raise ValueError(f"a Vocos decoder takes EnCodec codes, not {self.cfg.name}'s")
        return self._backend.codebook_table(self._model, self.n_q)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n_q, T) codes -> float32 mono waveform of T * hop samples at the codec's rate."""
        self.setup()
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64))[None].to(self._device)  # (1, n_q, T)
        with torch.inference_mode(), self._kernels():
            wave = self._backend.decode(self._model, x).reshape(-1)
            return wave[: x.shape[-1] * self.spec.hop].float().cpu().numpy()


def kernel_settings() -> dict:
    """The process-wide settings that choose CUDA float kernels, by name (bench/gpu_check.py
    reports them). Read through their classic names, as the rest of this project sets them;
    the matmul precision ("highest": no TF32; "high" or "medium": TF32) stands for matmul TF32."""
    cudnn = torch.backends.cudnn
    return {
        "cudnn.benchmark": cudnn.benchmark,
        "cudnn.deterministic": cudnn.deterministic,
        "cudnn.allow_tf32": cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def set_kernel_settings(settings: dict) -> None:
    """Set what `kernel_settings` returns (all of it)."""
    cudnn = torch.backends.cudnn
    cudnn.benchmark = settings["cudnn.benchmark"]
    cudnn.deterministic = settings["cudnn.deterministic"]
    cudnn.allow_tf32 = settings["cudnn.allow_tf32"]
    torch.set_float32_matmul_precision(settings["float32_matmul_precision"])


@contextlib.contextmanager
def cuda_kernels(benchmark: bool, deterministic: bool, tf32: bool):
    """CUDA kernel settings for a block (cuDNN autotuning and determinism, TF32 in cuDNN and in
    matmuls), restored after it, even on an error."""
    saved = kernel_settings()
    set_kernel_settings(
        {
            "cudnn.benchmark": benchmark,
            "cudnn.deterministic": deterministic,
            "cudnn.allow_tf32": tf32,
            "float32_matmul_precision": "high" if tf32 else "highest",
        }
    )
    try:
        yield
    finally:
        set_kernel_settings(saved)


def _as_wave(wave: np.ndarray, index: int, rate: int) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
        khz = f"{rate / 1000:g} kHz"
        raise ValueError(
            f"waves[{index}]: expected a 1-D float mono waveform at {khz}, got dtype {wave.dtype} "
            f"shape {wave.shape}; downmix to mono, resample to {khz} and scale to [-1, 1] first"
        )
    return wave.astype(np.float32, copy=False)


def codec_config_of(codec: dict, weights: str, device: str = "cpu") -> CodecConfig:
    """The settings that rebuild the codec a provenance `codec` record (index.json, or the part a
    checkpoint keeps) names: records written before other codecs existed are EnCodec's."""
    name = codec.get("model", DEFAULT_CODEC)
    if name == DEFAULT_CODEC:
        return CodecConfig(weights=weights, bandwidth=codec["bandwidth_kbps"], device=device)
    return CodecConfig(name=name, weights=weights, codebooks=codec["codebooks"], device=device)


def codec_for(codec: dict, weights: str | None = None, device: str = "cpu") -> CodecEncoder:
    """The codec a corpus's codes were made with: its provenance's `codec` record (index.json,
    or the part a checkpoint keeps) gives the codec, its codebooks and the weights' hash.
    `weights`: pretrained, random or a checkpoint path (default: what the provenance names, where
    it names a source). Raises `CodecMismatch` when the weights load but are not the corpus's,
    and ValueError / `WeightsUnavailable` when they cannot be loaded."""
    if weights is None:
        weights = (
            codec["weights_source"] if codec.get("weights") == "checkpoint" else codec.get("weights", "pretrained")
        )
    encoder = CodecEncoder(codec_config_of(codec, weights, device))
    encoder.setup()
    if encoder.weights.sha256 != codec["weights_sha256"]:
        source = f" ({codec['weights']}: {codec['weights_source']})" if "weights_source" in codec else ""
        raise CodecMismatch(
            f"{weights!r} loaded {encoder.spec.name} weights with sha256 {encoder.weights.sha256}, but the corpus "
            f"was encoded with weights sha256 {codec['weights_sha256']}{source}; pass those weights "
            "(a corpus built offline used 'random')"
        )
    return encoder
