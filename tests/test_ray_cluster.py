"""A real two-node Ray cluster on 127.0.0.1, started with the `ray` CLI as an operator would
(`ray start --head`, then `ray start --address=...`, each node with its own temp dir, ports and
resources). `valle-prep run --ray-address` runs from another working directory with a relative
--out, so every path the units get must be absolute; the worker node's raylet is killed
mid-run: the run moves that node's units to the other one and ends with the same bytes as a
single-node run, and so does the re-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.inspect.verify import verify
from tests.conftest import REPO, write_dag
from tests.test_resume_kill import command, committed_units, outputs

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket is held until all are bound (ports taken one at a
    time can come back twice, and Ray refuses two components on one port)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


class TwoNodeCluster:
    """Head and worker node started with the CLI; stopped by killing exactly their processes
    (never `ray stop`, which would stop every Ray on the machine)."""

    def __init__(self, env: dict):
        # Short paths: Ray's unix socket paths must stay under ~107 characters.
        self.head_dir = tempfile.mkdtemp(prefix="vc-head-", dir="/tmp")
        self.worker_dir = tempfile.mkdtemp(prefix="vc-node-", dir="/tmp")
        self.env = env
        # One draw for every port of both nodes, so no two are the same.
        self.ports = free_ports(3 + 2 * len(NODE_PORTS))
        self.address = f"127.0.0.1:{self.ports[0]}"

    def node_ports(self, node: int) -> list[str]:
        ports = self.ports[3 + node * len(NODE_PORTS) :][: len(NODE_PORTS)]
        return [x for name, port in zip(NODE_PORTS, ports) for x in (name, str(port))]

    def start(self) -> None:
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(200 * 2**20),
            "--disable-usage-stats",
        ]
        self._ray(
            "start",
            "--head",
            "--port",
            str(self.ports[0]),
            "--temp-dir",
            self.head_dir,
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(self.ports[1]),
            "--ray-client-server-port",
            str(self.ports[2]),
            *common,
            *self.node_ports(0),
        )
        self._ray(
            "start",
            "--address",
            self.address,
            "--temp-dir",
            self.worker_dir,
            "--resources",
            json.dumps({"second_node": 1}),
            *common,
            *self.node_ports(1),
        )

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    def processes(self, folder: str | None = None) -> list:
        import psutil
        import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

        folders = [folder] if folder else [self.head_dir, self.worker_dir]
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(f in " ".join(p.info["cmdline"] or []) for f in folders):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def kill_worker_raylet(self) -> None:
        raylets = [p for p in self.processes(self.worker_dir) if "raylet" in p.name()]
        assert len(raylets) == 1, raylets
        os.kill(raylets[0].pid, signal.SIGKILL)

    def stop(self) -> None:
        for _ in range(3):  # workers may still be spawning while their node goes down
            for p in self.processes():
                try:
                    p.kill()
                except Exception:
                    pass
            time.sleep(1)
        for folder in (self.head_dir, self.worker_dir):
            shutil.rmtree(folder, ignore_errors=True)


def test_two_node_cluster_survives_losing_a_node(tmp_path, tiny_corpus, built_corpus):
    expected = outputs(built_corpus[0].out)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    dag = write_dag(tmp_path / "tiny.yaml", tiny_corpus, ray={"start_timeout_s": 60})
    elsewhere = tmp_path / "elsewhere"  # the driver's working directory: not the raylets'
    elsewhere.mkdir()
    cluster = TwoNodeCluster(env)
    try:
        cluster.start()
        cmd = command(dag, Path("rel/out"), cluster.address)  # a relative --out
        out = elsewhere / "rel" / "out"
        first = subprocess.Popen(cmd, cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline and committed_units(out) < 1:
            time.sleep(0.05)
        assert first.poll() is None, f"the run ended before the node could be lost: {first.stderr.read()[-2000:]}"
        cluster.kill_worker_raylet()
        try:
            _, first_err = first.communicate(timeout=600)  # it must end, not hang
        except subprocess.TimeoutExpired:
            first.kill()
            pytest.fail("the run hung after the worker node was lost")

        # The lost node's actor dies with it; its unit moves to the other worker and the run ends.
        assert first.returncode == 0, first_err[-3000:]
        assert "retrying it" in first_err
        assert outputs(out) == expected

        again = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert outputs(out) == expected
        assert verify(out) == []
        assert not list(out.rglob("*.partial")) and not (tmp_path / "rel").exists()
    finally:
        cluster.stop()
