"""Placement: which codec workers to start on which nodes, and what each one books.

In: the cluster's nodes as `ray.nodes()` describes them, the `ray:` settings of the DAG, and
whether the codec runs on GPUs. Out: one `CodecSlot` per codec worker (its node, the CPUs and GPU
it books, its threads, how many units it is fed at once), or a `ClusterMismatch` that says
what does not fit, before anything starts: a request that no node can satisfy would otherwise
wait forever.

Everything is per node, never the cluster total: a worker runs on one node and can only use
that node's CPUs.
- GPU: one worker per GPU. A GPU node's CPUs are split evenly between its GPUs; of a GPU's share,
  half resamples inside the worker (threads) and the rest decodes in the unit tasks that feed it
  (one CPU each, on the same node), since decoding a FLAC and resampling it cost about the same
  (~5,000x real time per core each, measured here).
- CPU only: one worker per node, using every CPU of its node for torch threads; it books all but
  one, which its unit tasks (two in flight: one decoding while the other waits for codes) use,
  since on CPU decoding costs ~1% of encoding.
Pure functions (no Ray), so the rules are tested on made-up clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ClusterMismatch(RuntimeError):
    """The codec workers asked for cannot run on this cluster; the message says what to change."""


@dataclass(frozen=True)
class CodecSlot:
    node_id: str
    num_cpus: int  # CPUs the worker books
    num_gpus: int  # 0 or 1
    threads: int  # torch CPU threads: the encoding on CPU workers, host-side ops on GPU workers
    resample_threads: int
    units_in_flight: int  # unit tasks feeding this worker at once (its decode pool)


def alive_nodes(nodes: list[dict]) -> list[dict]:
    """Alive nodes with at least one CPU, in a fixed order (by node id)."""
    return sorted(
        (n for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1), key=lambda n: n["NodeID"]
    )


def cluster_summary(nodes: list[dict]) -> str:
    return (
        "; ".join(
            f"node {n['NodeID'][:8]}: {int(n['Resources'].get('CPU', 0))} CPUs, "
            f"{int(n['Resources'].get('GPU', 0))} GPUs"
            for n in alive_nodes(nodes)
        )
        or "no alive node"
    )


def uses_gpu(device: str, nodes: list[dict]) -> bool:
    return device.startswith("cuda") or (
        device == "auto" and any(n["Resources"].get("GPU", 0) >= 1 for n in alive_nodes(nodes))
    )


def plan_slots(
    nodes: list[dict],
    use_gpu: bool,
    codec_workers: int | None,
    cpus_per_codec_worker: int | None,
    units_in_flight: int | None,
) -> list[CodecSlot]:
    usable = alive_nodes(nodes)
    if not usable:
        raise ClusterMismatch("the Ray cluster has no alive node with a CPU")
    slots = (
        _gpu_slots(usable, codec_workers, cpus_per_codec_worker)
        if use_gpu
        else _cpu_slots(usable, codec_workers, cpus_per_codec_worker)
    )
    if units_in_flight is not None:  # a total for the cluster: shared out between the workers
        per_worker = max(1, math.ceil(units_in_flight / len(slots)))
        slots = [CodecSlot(s.node_id, s.num_cpus, s.num_gpus, s.threads, s.resample_threads, per_worker) for s in slots]
    return slots


def _gpu_slots(nodes: list[dict], workers: int | None, cpus: int | None) -> list[CodecSlot]:
    gpu_nodes = [(n, int(n["Resources"].get("GPU", 0))) for n in nodes if n["Resources"].get("GPU", 0) >= 1]
    total = sum(g for _, g in gpu_nodes)
    if total == 0:
        raise ClusterMismatch(
            "codec.device asks for CUDA but no node of the Ray cluster has a GPU "
            f"({cluster_summary(nodes)}); use codec.device=cpu or add GPU nodes"
        )
    workers = workers or total
    if workers > total:
        raise ClusterMismatch(
            f"ray.codec_workers={workers} but the Ray cluster has {total} GPUs "
            f"({cluster_summary(nodes)}); one codec worker runs per GPU: set "
            f"ray.codec_workers to at most {total}, or null for one per GPU"
        )
    slots = []
    for node, gpus in gpu_nodes:  # fill node by node, so a node's GPUs share its CPUs evenly
        share = max(1, int(node["Resources"]["CPU"]) // gpus)  # CPUs per GPU on this node
        resample = cpus or max(1, share // 2)
        booked = min(resample, share - 1)  # at least one CPU of the share stays for unit tasks
        for _ in range(min(gpus, workers - len(slots))):
            # torch's own CPU threads too: by default it would start one per core of the node
            slots.append(
                CodecSlot(
                    node["NodeID"],
                    num_cpus=booked,
                    num_gpus=1,
                    threads=resample,
                    resample_threads=resample,
                    units_in_flight=max(1, share - booked),
                )
            )
    return slots


def _cpu_slots(nodes: list[dict], workers: int | None, cpus: int | None) -> list[CodecSlot]:
    workers = workers or len(nodes)
    per_node = [workers // len(nodes) + (i < workers % len(nodes)) for i in range(len(nodes))]
    slots = []
    for node, count in zip(nodes, per_node):
        if not count:
            continue
        node_cpus = int(node["Resources"]["CPU"])
        share = node_cpus // count
        if share < 1:
            raise ClusterMismatch(
                f"ray.codec_workers={workers} puts {count} codec workers on node "
                f"{node['NodeID'][:8]}, which has {node_cpus} CPUs "
                f"({cluster_summary(nodes)}); lower ray.codec_workers"
            )
        threads = cpus or share
        booked = max(1, min(threads, share - 1))
        if booked * count + 1 > node_cpus:  # the unit tasks feeding them need a CPU too
            raise ClusterMismatch(
                f"ray.codec_workers={workers} puts {count} codec workers on node "
                f"{node['NodeID'][:8]} ({node_cpus} CPUs) and would not leave a CPU "
                "for the unit tasks that feed them; lower ray.codec_workers"
            )
        slots += [
            CodecSlot(
                node["NodeID"], num_cpus=booked, num_gpus=0, threads=threads, resample_threads=1, units_in_flight=2
            )
        ] * count
    return slots
