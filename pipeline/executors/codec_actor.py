"""The codec worker as a Ray actor (pipeline.executors.ray_cluster starts it).

Apart from ray_cluster.py, and torch-free until constructed: unit tasks import ray_cluster.py and
hold a handle to this actor (which imports this module), and decode workers start faster and
smaller without torch (~350 MB).
"""

from __future__ import annotations

from pipeline.encode.codec_worker import CodecWorker


class CodecActor(CodecWorker):
    """CodecWorker as a Ray actor; says where it runs.

    The weights come as `[ObjectRef]` and are fetched here: Ray would resolve a top-level ref
    itself, but then logs an error-level warning about restartable actors on every run. The
    driver holds the ref until the run ends, so a restarted actor fetches them again."""

    def __init__(self, cfg, state_ref: list, weights, threads, resample_threads):
        import ray

        super().__init__(cfg, ray.get(state_ref[0]), weights, threads, resample_threads)

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()
