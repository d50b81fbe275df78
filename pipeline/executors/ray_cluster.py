"""Ray executor: units as Ray tasks, fed to codec workers that are Ray actors; the production path.

In: the pending units, the driver's resolved codec, the `ray:` settings. Out: `UnitsOutcome`.

- Weights travel once: the driver's loaded state dict is `ray.put` into the object store and
  every codec actor builds its model from it (checked against its hash), so no node downloads
  or loads the checkpoint again.
- Placement (executors/placement.py) is decided from the nodes' own resources before anything
  starts; a request the cluster cannot hold stops the run at once with a message, and actors
  that still do not come up within `ray.start_timeout_s` stop it too. Nothing waits forever.
- Each codec actor is threaded: the unit tasks feeding it call it concurrently, so one call's
  resampling and padding overlap another's forward passes. Its unit tasks run on its node
  (soft node affinity), so audio crosses only that node's shared-memory object store.
- Codec actors restart after a crash (`ray.codec_restarts`), on their own node, and their
  in-flight calls are retried. When a node is lost, its actors die with it, and each unit that
  fails for a reason of the cluster (an actor or node lost) is retried on another worker; a
  unit that fails for its own reason fails alone and the run reports it.
- A worker that has started and is then lost for good (its restart fails on a GPU that stays
  broken, its node is gone, or it fails units in a row) is retired, named by node and device,
  and its units go to the others; the run ends only when no worker is left. A worker that fails
  its first start stops the run at once: every worker would fail the same way.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pipeline.encode.unit import UnitJob, run_unit
from pipeline.executors import ResolvedCodec, UnitsOutcome, chunked, failure, progress_bar
from pipeline.executors.placement import ClusterMismatch, CodecSlot, cluster_summary, plan_slots, uses_gpu
from pipeline.executors.streaks import FailureStreaks
from tokens.codec_settings import batch_seconds

if TYPE_CHECKING:
    from pipeline.dag import RayConfig

# torch is imported only where the codec runs (pipeline.executors.codec_actor): unit tasks
# import this module to run `_unit_task`, and decode workers start faster and smaller without it.

log = logging.getLogger("pipeline.executors.ray")


def _unit_task(job: UnitJob, actor) -> dict:
    import ray

    job = replace(job, codec_stack=ray.get(actor.stack.remote()))  # the worker that encodes it

    def encode_async(windows, rates):
        ref = actor.encode.remote(windows, rates)
        return lambda: ray.get(ref)

    return run_unit(job, encode_async)


def cluster_failure(err: BaseException) -> bool:
    """True when `err` is the cluster's doing (a process, actor or node lost), not the unit's."""
    import ray.exceptions as rex

    lost = (
        rex.RayActorError,
        rex.ActorUnavailableError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ObjectLostError,
        rex.OwnerDiedError,
        rex.TaskUnschedulableError,
        rex.ActorUnschedulableError,
        rex.LocalRayletDiedError,
        rex.RaySystemError,
    )
    if isinstance(err, rex.RayTaskError) and not isinstance(err, lost):
        return isinstance(err.cause, lost)
    return isinstance(err, lost)


@dataclass
class _Worker:
    slot: CodecSlot
    actor: object
    node_id: str
    running: int = 0
    starting: bool = True  # never up yet (fed already: its units' first calls wait for its model)
    down_since: float | None = None  # when it started, or lost a unit; None while it is known up
    probe: object = None  # ObjectRef of ready() while starting or down
    dead: bool = False
    where: str = ""  # node and device, in words, once it answered

    def described(self) -> str:
        return self.where or f"node {self.node_id[:8]}"

    def free(self) -> bool:
        up = self.starting or self.down_since is None
        return not self.dead and up and self.running < self.slot.units_in_flight


@dataclass
class _Attempt:
    job: UnitJob
    tries: int = 0
    avoid: set = field(default_factory=set)  # workers it failed on


def _init_ray(cfg: RayConfig) -> None:
    import ray

    # "local": a new embedded Ray, never a cluster that happens to run on this machine
    # (address=None would join the latest `ray start` cluster found in /tmp/ray).
    ray.init(address=cfg.address or "local", include_dashboard=False, logging_level=logging.WARNING)


class RayExecutor:
    def __init__(self, cfg: RayConfig, codec_actor: type | None = None):
        self.cfg = cfg
        self.codec_actor = codec_actor  # None: CodecActor; tests give a subclass that injects faults
        self._state = None  # ObjectRef of the codec weights while units run
        self._unit_task = None  # the remote function, made once
        self._started_ray = False  # by ensure_ray: Ray stays up until close()

    def ensure_ray(self) -> None:
        """Start Ray now (for work before the units, e.g. downloads) unless it is up already;
        it then stays up for the units, until `close()`."""
        import ray

        if not ray.is_initialized():
            _init_ray(self.cfg)
            self._started_ray = True

    def close(self) -> None:
        """Shut down the Ray that `ensure_ray` started, if any."""
        import ray

        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def run_units(self, jobs: list[UnitJob], codec: ResolvedCodec, progress: bool) -> UnitsOutcome:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            _init_ray(self.cfg)
        workers = []
        try:
            nodes = ray.nodes()
            use_gpu = uses_gpu(codec.cfg.device, nodes)
            slots = plan_slots(
                nodes, use_gpu, self.cfg.codec_workers, self.cfg.cpus_per_codec_worker, self.cfg.units_in_flight
            )
            cfg = replace(codec.cfg, device="cuda" if use_gpu else "cpu")
            workers = self._start(slots, cfg, codec)
            jobs = chunked(jobs, batch_seconds(cfg, "cuda" if use_gpu else "cpu"))
            outcome = self._schedule(jobs, workers, progress, cluster_summary(nodes))
            for ref in [w.actor.stats.remote() for w in workers if not w.dead and w.down_since is None]:
                try:
                    outcome.codec_stats.update(ray.get(ref, timeout=60))
                except ray.exceptions.RayError:  # counters only: a worker lost now costs nothing
                    pass
            return outcome
        finally:
            for w in workers:
                ray.kill(w.actor, no_restart=True)
            self._state = None
            if started_here:
                ray.shutdown()

    def _start(self, slots: list[CodecSlot], cfg, codec: ResolvedCodec) -> list[_Worker]:
        """Start one actor per slot on its node. Units are fed to them at once (their unit tasks
        start and decode while the model loads); `_schedule` watches the start-up."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from pipeline.executors.codec_actor import CodecActor

        # Once, for every actor and every restart: the ref lives as long as this executor, since
        # a restart needs the object again.
        self._state = state = ray.put(codec.state)
        actor_cls, workers = ray.remote(self.codec_actor or CodecActor), []
        for slot in slots:
            options = actor_cls.options(
                num_cpus=slot.num_cpus,
                num_gpus=slot.num_gpus,
                max_restarts=self.cfg.codec_restarts,
                max_task_retries=self.cfg.codec_restarts,
                max_concurrency=slot.units_in_flight + 2,  # its unit tasks, plus ready/stats
                # Pinned to its node: after a crash it restarts there. If the node is gone it dies,
                # and its units move to the other workers; restarting on another node would take
                # the CPUs that node's unit tasks need, and they would wait for it forever.
                scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
            )
            actor = options.remote(cfg, [state], codec.weights, slot.threads, slot.resample_threads)
            workers.append(_Worker(slot, actor, slot.node_id, probe=actor.ready.remote(), down_since=time.monotonic()))
        log.info(
            "%d codec worker(s): %s",
            len(workers),
            ", ".join(
                f"{'GPU' if s.num_gpus else f'CPU, {s.threads} lanes'} on {s.node_id[:8]} "
                f"fed by {s.units_in_flight} units"
                for s in slots
            ),
        )
        return workers

    def _schedule(self, jobs: list[UnitJob], workers: list[_Worker], progress: bool, cluster: str) -> UnitsOutcome:
        import ray

        outcome = UnitsOutcome()
        self._streaks = FailureStreaks()
        queue = deque(_Attempt(job) for job in jobs)
        running: dict = {}  # ObjectRef -> (_Attempt, _Worker)
        bar = progress_bar(jobs, progress)
        try:
            while queue or running:
                self._feed(queue, running, workers)
                if not any(not w.dead for w in workers):
                    while queue:
                        attempt = queue.popleft()
                        outcome.failed.append(
                            {
                                "unit": attempt.job.unit.name,
                                "error": "every codec worker is lost (the log names each one's node, device and cause)",
                            }
                        )
                        bar.update(round(attempt.job.unit.seconds))
                    if not running:
                        break
                self._wait(queue, running, workers, outcome, bar, cluster)
        except BaseException:
            for ref in running:  # the run stops, and so do its unit tasks (their files stay partial)
                ray.cancel(ref)
            raise
        _report_failed(self._streaks.leftover(), outcome, bar)
        bar.close()
        return outcome

    def _feed(self, queue: deque, running: dict, workers: list[_Worker]) -> None:
        """Give every free worker units, preferring units that did not fail on it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._unit_task = self._unit_task or ray.remote(_unit_task)
        for worker in workers:
            while queue and worker.free():
                attempt = next((a for a in queue if id(worker) not in a.avoid), queue[0])
                queue.remove(attempt)
                task = self._unit_task.options(
                    num_cpus=worker.slot.unit_cpus,
                    max_retries=2,  # Ray re-runs it if its process or node is lost
                    scheduling_strategy=NodeAffinitySchedulingStrategy(worker.node_id, soft=True),
                )
                running[task.remote(attempt.job, worker.actor)] = (attempt, worker)
                worker.running += 1

    def _wait(
        self, queue: deque, running: dict, workers: list[_Worker], outcome: UnitsOutcome, bar, cluster: str
    ) -> None:
        """Handle what finishes first: a unit (done, failed, or lost and queued again) or a
        worker's probe; then the workers' deadlines."""
        import ray

        probes = {w.probe: w for w in workers if w.probe is not None}
        deadlines = [w.down_since + self.cfg.start_timeout_s for w in workers if w.down_since is not None]
        timeout = max(0.0, min([time.monotonic() + 5.0, *deadlines]) - time.monotonic())
        # Probes first (ray.wait returns ready refs in the order given): when a worker's start-up
        # fails, its units fail at about the same moment; whichever is seen first names the cause.
        ready, _ = ray.wait(list(probes) + list(running), num_returns=1, timeout=timeout)
        for ref in ready:
            if ref in probes:
                self._worker_back(probes[ref], ref)
                continue
            attempt, worker = running.pop(ref)
            worker.running -= 1
            try:
                outcome.results.append(ray.get(ref))
                _report_failed(self._streaks.succeeded(id(worker)), outcome, bar)
            except Exception as err:
                _stop_if_start_failed(worker, err)
                if cluster_failure(err) and attempt.tries < self.cfg.codec_restarts:
                    log.warning(
                        "unit %s lost its codec worker or node (%s); retrying it",
                        attempt.job.unit.name,
                        type(err).__name__,
                    )
                    attempt.tries += 1
                    attempt.avoid.add(id(worker))
                    queue.appendleft(attempt)
                    self._worker_down(worker)
                    continue
                streak = self._streaks.failed(id(worker), attempt, err)
                if streak is not None and sum(not w.dead for w in workers) > 1:
                    self._retire_for_streak(worker, streak, queue, outcome, bar)
                elif streak is not None:  # the last worker stays: these units failed on their own
                    _report_failed(streak, outcome, bar)
                continue  # its progress counts once it is settled (reported, or done elsewhere)
            bar.update(round(attempt.job.unit.seconds))
        now = time.monotonic()
        for w in workers:
            if w.down_since is None or now - w.down_since < self.cfg.start_timeout_s:
                continue
            if w.starting:
                s = w.slot
                raise ClusterMismatch(
                    f"a codec worker ({s.num_cpus} CPUs, {s.num_gpus} GPU on node {s.node_id[:8]}) did "
                    f"not start within ray.start_timeout_s={self.cfg.start_timeout_s:g} s on a cluster "
                    f"with {cluster}; check `ray status` for what holds the resources"
                )
            _retire(w, f"did not come back within ray.start_timeout_s={self.cfg.start_timeout_s:g} s")

    def _retire_for_streak(self, worker: _Worker, streak: list, queue: deque, outcome: UnitsOutcome, bar) -> None:
        """A worker that failed units in a row: never fed again; those units go to the others."""
        _retire(worker, f"failed {len(streak)} units in a row (the last: {_last_line(streak[-1][1])})")
        for attempt, err in streak:
            if attempt.tries < self.cfg.codec_restarts:
                attempt.tries += 1
                attempt.avoid.add(id(worker))
                queue.appendleft(attempt)
            else:
                _report_failed([(attempt, err)], outcome, bar)

    def _worker_down(self, worker: _Worker) -> None:
        """Stop feeding a worker that lost a unit until it answers again (restarted on its
        node), or for good when Ray says it is dead or it stays away too long. A worker still
        starting keeps its start-up probe, whose outcome says the same."""
        if not (worker.starting or worker.dead or worker.down_since is not None):
            worker.down_since = time.monotonic()
            worker.probe = worker.actor.ready.remote()

    def _worker_back(self, worker: _Worker, ref) -> None:
        """A worker's probe answered: it is up (where it runs is known from now on), or it is
        lost: a first start that failed stops the run; a worker that was up is retired."""
        import ray

        worker.probe, worker.down_since = None, None
        try:
            worker.node_id, worker.where = ray.get(ref)
        except ray.exceptions.RayError as err:
            _stop_if_start_failed(worker, err)
            failed_restart = _constructor_failed(err) is not None
            _retire(worker, f"{'did not restart' if failed_restart else 'is gone'} ({_last_line(err)})")
        worker.starting = False


def _retire(worker: _Worker, why: str) -> None:
    """Never feed this worker again: named with its node and device (known since it first
    answered), so that the node can be looked at. The units it held fail as lost and go to the
    other workers."""
    import ray

    log.warning("codec worker on %s %s; retired, its units go to the other workers", worker.described(), why)
    worker.dead, worker.down_since, worker.probe = True, None, None
    ray.kill(worker.actor, no_restart=True)


def _report_failed(failed: list, outcome: UnitsOutcome, bar) -> None:
    """Units that failed for reasons of their own: reported at the end of the run by the error
    the unit raised, as the local executor reports them (so the runner tells a stack refusal from
    a failure); Ray's wrapper, with the unit task's traceback, goes to the log."""
    import ray.exceptions as rex

    for attempt, err in failed:
        if isinstance(err, rex.RayTaskError) and isinstance(err.cause, Exception):
            log.warning("unit %s failed: %s", attempt.job.unit.name, err)
            err = err.cause
        outcome.failed.append(failure(attempt.job, err))
        bar.update(round(attempt.job.unit.seconds))


def _stop_if_start_failed(worker: _Worker, err: BaseException) -> None:
    """Stop the run when a codec worker's own constructor failed on its first start (weights,
    driver, device, ...): every worker would. Seen by its start-up probe or, often first, by a
    unit that called it. A worker that was up and fails to restart (a GPU still broken after a
    sticky error: Ray reports that as a constructor failure too) is that node's problem: the
    caller retires it."""
    died = _constructor_failed(err)
    if worker.starting and died is not None:
        raise ClusterMismatch(
            f"a codec worker failed to start on node {worker.slot.node_id[:8]}: {_last_line(died)}"
        ) from None


def _constructor_failed(err: BaseException):
    """Ray's error saying that the actor's constructor raised (on a start or a restart), seen
    directly or by a unit task that called the actor; None for any other error."""
    import ray.exceptions as rex

    died = err.cause if isinstance(err, rex.RayTaskError) and isinstance(err.cause, rex.RayActorError) else err
    return died if isinstance(died, rex.RayActorError) and died.actor_init_failed else None


def _last_line(err: BaseException) -> str:
    """What went wrong, in a line: Ray's messages end with the exception (the traceback is in
    the worker's log)."""
    lines = str(err).strip().splitlines()
    return lines[-1][:300] if lines else type(err).__name__
