"""`--engine ray` on a local multi-node Ray cluster that loses a worker node in the middle of a scan.

A head node without CPUs (it runs the driver and the cluster's control services) and two worker
nodes with one CPU each: the decoding tasks and the one model replica run on the workers. The
model (test_scan_engines.py's MeanBackend) blocks on its third batch and says on which node; the
test then kills that node (SIGKILL, as in a crash), so the replica dies with a batch in flight, and
the task results held in that node's object store are lost. The scan must finish with the store
the local engine gives for the same tree: one row per file, every image scored, the bad files
reported, and a sound SQLite file.

The scenario runs in a child process (this file run as a script) under a hard timeout: the child
and the Ray processes it starts share a process group that is killed on timeout, so a hang can
never block the suite nor leave a cluster behind.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("ray")

from nsfwlab.scan import Engine, ResultStore, scan
from test_scan_engines import MeanBackend, engine_config, run_local, store_state

#: The whole scenario, cluster start-up and shutdown included, must end within this (seconds).
TIMEOUT = 300
IMAGES = 56


def make_flat_tree(root: Path) -> Path:
    """IMAGES distinct flat-colour images (JPEG and PNG), two duplicates and two bad files: 60 files."""
    root.mkdir(parents=True)
    for i in range(IMAGES):
        img = Image.new("RGB", (48 + i, 40), (37 * i % 256, 90 + i, 250 - 3 * i))
        img.save(root / (f"p{i:02d}.png" if i % 2 else f"j{i:02d}.jpg"), quality=95)  # PNGs ignore quality
    (root / "p01_again.png").write_bytes((root / "p01.png").read_bytes())
    (root / "j50_again.jpg").write_bytes((root / "j50.jpg").read_bytes())
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image\n")
    return root


class GatedMean(MeanBackend):
    """MeanBackend that logs the node of every batch; the first replica blocks on its third batch
    (once in the whole cluster) after saying where, and waits there for its node to be killed."""

    def __init__(self, gate: Path) -> None:
        self.gate = str(gate)
        self.calls = 0

    def predict(self, batch: Any) -> Any:
        import ray

        node = ray.get_runtime_context().get_node_id()
        with open(os.path.join(self.gate, "nodes.log"), "a") as log:
            log.write(node + "\n")
        self.calls += 1
        if self.calls == 3:
            try:
                os.close(os.open(os.path.join(self.gate, "lock"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # a restarted replica: the gate has been used
            else:
                Path(self.gate, "blocked.tmp").write_text(node)
                os.replace(os.path.join(self.gate, "blocked.tmp"), os.path.join(self.gate, "blocked"))
                time.sleep(TIMEOUT)  # until the node is killed
        return super().predict(batch)


def _kill_blocked_node(cluster: Any, gate: Path, out: dict[str, Any]) -> None:
    """Waits for the replica to block, then kills its node as a crash would (no graceful exit)."""
    blocked = gate / "blocked"
    deadline = time.monotonic() + TIMEOUT
    while not blocked.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    node_id = blocked.read_text() if blocked.exists() else None
    for node in list(cluster.worker_nodes):
        if node.node_id == node_id:
            cluster.remove_node(node, allow_graceful=False)
            out["killed"] = node_id


def main(work: Path) -> None:
    """The child: a 3-node cluster, a scan of work/tree into work/ray.sqlite while a node dies."""
    import ray
    from ray.cluster_utils import Cluster

    import test_scan_engines

    gate = work / "gate"
    gate.mkdir()
    # A dead node is found in ~3 s (Ray's default: ~15 s); a live one is declared dead only if
    # three health checks in a row take over 2 s.
    fast_health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                   "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 << 20, "_system_config": fast_health})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.cloudpickle.register_pickle_by_value(test_scan_engines)  # the replicas cannot import test modules
        out: dict[str, Any] = {"nodes": len(ray.nodes())}
        killer = threading.Thread(target=_kill_blocked_node, args=(cluster, gate, out), daemon=True)
        killer.start()
        start = time.monotonic()
        with ResultStore(work / "ray.sqlite") as store:
            summary = scan([work / "tree"], store, engine_config(engine=Engine.RAY),
                           backend=GatedMean(gate))  # type: ignore[arg-type]
        out["scan_seconds"] = time.monotonic() - start
        killer.join(timeout=1)
        out["summary"] = summary.to_dict()
        out["batch_nodes"] = (gate / "nodes.log").read_text().split()
        (work / "result.json").write_text(json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_ray_scan_survives_losing_a_worker_node(tmp_path: Path) -> None:
    tree = make_flat_tree(tmp_path / "tree")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = child.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        log, _ = child.communicate()
        pytest.fail(f"the Ray cluster scenario did not end within {TIMEOUT} s:\n{log[-4000:]}")
    finally:
        try:  # whatever the child left behind (Ray's processes share its process group)
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert child.returncode == 0, log[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    print(f"cluster scan: {result['scan_seconds']:.1f} s")

    # A node with the replica died while it had a batch; later batches ran on the other node.
    assert result["nodes"] == 3 and result.get("killed") is not None
    nodes = result["batch_nodes"]
    assert nodes[2] == result["killed"] and nodes[-1] != result["killed"]

    # The local engine's store, row for row: one row per file, every image scored, bad files reported.
    local = run_local(tree, tmp_path / "local.sqlite")
    distributed = store_state(tmp_path / "ray.sqlite")
    assert len(distributed) == IMAGES + 4 == local.seen == result["summary"]["seen"]
    assert distributed == store_state(tmp_path / "local.sqlite")
    summary = result["summary"]
    assert (summary["scored"], summary["reused"], summary["errors"]) == (IMAGES, 2, 2)
    with sqlite3.connect(tmp_path / "ray.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM results").fetchone() == (IMAGES + 4,) * 2


if __name__ == "__main__":
    main(Path(sys.argv[1]))
