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
- CPU only: every CPU of a node encodes, one utterance at a time on one thread (the worker's
  lanes, tokens.codec), in workers of at most MAX_LANES lanes each. A worker books all of its
  share of the node but one CPU, which its unit tasks (two in flight, half a CPU each: one decoding
  while the other waits for codes) use, since on CPU decoding costs ~1% of encoding.
Pure functions (no Ray), so the rules are tested on made-up clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


class ClusterMismatch(RuntimeError):
    """The codec workers asked for cannot run on this cluster; the message says what to change."""


# Lanes per CPU codec worker at most: more workers on a bigger node. Each forward pass holds the
# GIL for its Python steps, about 3 % of the pass (measured: 2.8 ms of ~100 ms for a 3.5 s
# utterance), so 8 lanes share one GIL at ~25 %; 64 would queue on it.
MAX_LANES = 8


@dataclass(frozen=True)
class CodecSlot:
    node_id: str
    num_cpus: int  # CPUs the worker books
    num_gpus: int  # 0 or 1
    threads: int  # CPU workers: lanes (passes at once, one thread each); GPU: host-side ops
    resample_threads: int
    units_in_flight: int  # unit tasks feeding this worker at once (its decode pool)
    unit_cpus: float = 1.0  # CPUs each of those unit tasks books


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
        slots = [
            replace(s, units_in_flight=per_worker, unit_cpus=s.unit_cpus if s.num_gpus else 1 / per_worker)
            for s in slots
        ]
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
    if workers:
        per_node = [workers // len(nodes) + (i < workers % len(nodes)) for i in range(len(nodes))]
    else:
        per_node = [math.ceil(int(n["Resources"]["CPU"]) / (cpus or MAX_LANES)) for n in nodes]
    slots = []
    for node, count in zip(nodes, per_node):
        if not count:
            continue
        node_cpus = int(node["Resources"]["CPU"])
        if node_cpus < count:
            raise ClusterMismatch(
                f"ray.codec_workers={workers} puts {count} codec workers on node "
                f"{node['NodeID'][:8]}, which has {node_cpus} CPUs "
                f"({cluster_summary(nodes)}); lower ray.codec_workers"
            )
        for i in range(count):
            share = node_cpus // count + (i < node_cpus % count)  # the node's CPUs, split evenly
            threads = cpus or share
            booked = max(1, min(threads, share - 1))
            slots.append(
                CodecSlot(
                    node["NodeID"],
                    num_cpus=booked,
                    num_gpus=0,
                    threads=threads,
                    resample_threads=1,
                    units_in_flight=2,
                    unit_cpus=0.5,
                )
            )
        if sum(s.num_cpus for s in slots[-count:]) + 1 > node_cpus:  # the unit tasks need a CPU too
            raise ClusterMismatch(
                f"ray.codec_workers={workers} puts {count} codec workers on node "
                f"{node['NodeID'][:8]} ({node_cpus} CPUs) and would not leave a CPU "
                "for the unit tasks that feed them; lower ray.codec_workers"
            )
    return slots
