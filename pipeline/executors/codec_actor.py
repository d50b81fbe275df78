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

    def ready(self) -> tuple[str, str]:
        """(node id, where it runs in words), once the model is loaded."""
        import ray

        return ray.get_runtime_context().get_node_id(), self.where()

    def where(self) -> str:
        """Node and device, for messages: 'node 1a2b3c4d, cuda:0 (NVIDIA H100 80GB HBM3)'."""
        import ray
        import torch

        device = self.encoder.device
        name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        return f"node {ray.get_runtime_context().get_node_id()[:8]}, {device}{name}"

    def device_broke(self, err: BaseException) -> None:
        """Exit the actor's process: Ray restarts it (ray.codec_restarts) on a fresh CUDA context,
        and the units it held fail as lost, so the executor retries them on other workers."""
        import logging
        import os

        logging.getLogger(__name__).error(
            "codec worker %s: %s: %s; exiting so that Ray restarts it", self.where(), type(err).__name__, err
        )
        os._exit(1)
