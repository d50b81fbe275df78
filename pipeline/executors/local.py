"""Local executor: every unit in this process, one after another, without Ray.

The codec worker runs in a background thread: while it encodes a chunk, the unit decodes the
next (torch and libsndfile release the GIL). Same stage code and same codes as on Ray.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from pipeline.encode.codec_worker import CodecWorker
from pipeline.encode.unit import UnitJob, run_unit
from pipeline.executors import ResolvedCodec, UnitsOutcome, chunked, failure, progress_bar
from tokens.codec_settings import batch_seconds


class LocalExecutor:
    def __init__(self, threads: int | None = None, resample_threads: int = 1):
        self.threads = threads  # the codec's lanes on CPU; null: the codec's default, one per core
        self.resample_threads = resample_threads

    def run_units(self, jobs: list[UnitJob], codec: ResolvedCodec, progress: bool) -> UnitsOutcome:
        worker = CodecWorker(codec.cfg, codec.state, codec.weights, self.threads, self.resample_threads)
        device_type = worker.encoder.device.type
        outcome = UnitsOutcome()
        bar = progress_bar(jobs, progress)
        with ThreadPoolExecutor(1, thread_name_prefix="codec") as codec_thread:

            def encode_async(windows, rates):
                return codec_thread.submit(worker.encode, windows, rates).result

            stack = worker.stack()
            for job in chunked(jobs, batch_seconds(codec.cfg, device_type)):
                job = replace(job, codec_stack=stack)
                try:
                    outcome.results.append(run_unit(job, encode_async))
                except Exception as err:  # a unit's failure must not cost the others
                    outcome.failed.append(failure(job, err))
                bar.update(round(job.unit.seconds))
        bar.close()
        worker.close()
        outcome.codec_stats.update(worker.stats())
        return outcome
