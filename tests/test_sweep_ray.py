"""The Ray launcher for real: a local Ray cluster runs a two-job multirun, sealed off from the network.

A Ray head listens on network ports, and a server started by a test may only be reachable on
loopback. So the head and the multirun both run inside namespaces the test creates with
``unshare``: a network namespace whose only interface is ``lo``, and a PID namespace, so that every
Ray process (the daemons detach into sessions of their own) dies with the namespace however the
test ends. ``ray stop --force`` runs at the end too, and every step has a timeout.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.test_sweep import (
    RAY_ENV,
    assert_bad_jobs_failed_alone,
    job_dirs,
    multirun_command,
    needs,
)

# A user + network + PID namespace: mapped root, only `lo`, and all its processes die with its first one.
UNSHARE = ["unshare", "--map-root-user", "--net", "--pid", "--mount-proc", "--kill-child"]
RAY_PORT = 6379  # the namespace has its own ports, so a fixed one cannot collide
TIMEOUT_S = 300
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
RAY_OVERRIDES = ["hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{RAY_PORT}",
                 # joining a running cluster, ray.init refuses the launcher's default object_store_memory
                 "+hydra.launcher.ray.init.object_store_memory=null"]

# $1 starts the Ray head, $2 is the multirun, $3 stops Ray: each a shell-quoted command.
NAMESPACE_SCRIPT = """
ip link set lo up || exit 90
if ip -o link show | grep -v ': lo:'; then echo 'an interface other than lo' >&2; exit 91; fi
eval "timeout 90 $1" || exit 92
eval "timeout 180 $2"
status=$?
eval "timeout 30 $3"
exit $status
"""


def namespaces_allowed() -> bool:
    """Whether this machine lets an unprivileged user create the namespaces the test runs in."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = [
    needs["ray"],
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="ray is not installed (pip install -e '.[ray]')"),
    pytest.mark.skipif(not namespaces_allowed(),
                       reason=f"cannot create a loopback-only namespace here (`{' '.join(UNSHARE)} true` fails)"),
]


def run_in_namespace(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``sh -c script`` inside fresh namespaces; on timeout its process group is killed, and the namespace with it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", **RAY_ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [*UNSHARE, "sh", "-c", script, "sh", *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"the Ray multirun took over {TIMEOUT_S} s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ray_multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A Ray head on 127.0.0.1, then ``python train.py -m hydra/launcher=ray ...`` against it, then ``ray stop``."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    # Ray's Unix sockets live under its temporary directory: keep the path short, and apart from /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="mlpkit-ray-")
    try:
        start = [*RAY_CLI, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}", "--num-cpus=2",
                 "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={ray_tmp}"]
        run = multirun_command(sweep_dir, *RAY_OVERRIDES, *overrides)
        return run_in_namespace(NAMESPACE_SCRIPT, shlex.join(start), shlex.join(run),
                                shlex.join([*RAY_CLI, "stop", "--force"]), cwd=sweep_dir.parent)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_worker_run_dirs(output: str) -> set[str]:
    """Run directories that jobs printed from inside Ray workers (lines prefixed ``(_run_job pid=N)``)."""
    return set(re.findall(r"\(_run_job pid=\d+\)\S*\s+run directory: (.+)", output))


@pytest.mark.slow
def test_ray_launcher_runs_the_jobs_on_a_local_cluster_and_reports_a_failed_one(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = ray_multirun(sweep_dir, "activation=relu,tanh", "model.hidden_sizes=[8],[8,0]")
    output = result.stdout + result.stderr
    assert_bad_jobs_failed_alone(sweep_dir, result, "model.hidden_sizes=[8,0]", 4)
    assert "| rank | overrides | val_loss |" in result.stdout  # the table went to the terminal
    completed = [name for name in job_dirs(sweep_dir) if (sweep_dir / name / "metrics.json").exists()]
    assert len(completed) == 2 and all("[8,0]" not in name for name in completed)

    # The jobs went through the Ray launcher to the cluster this test started, and ran in its workers.
    assert "Ray Launcher is launching 4 jobs" in output
    assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{RAY_PORT}" in output
    assert ray_worker_run_dirs(output) == {str(sweep_dir / name) for name in completed}
    job_ids = {yaml.safe_load((sweep_dir / name / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"]
               for name in job_dirs(sweep_dir)}
    assert job_ids == {f"job_id_for_{i}" for i in range(4)}  # the id the Ray launcher gives each job
    assert "Stopped all" in output  # ray stop --force found the cluster's processes
