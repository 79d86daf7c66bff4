"""turborank against Ray clusters as a cluster user meets them: a head already running on the
machine (`ray start --head`), one that requires a token, an address where nothing answers, a model
path given relative to the driver's directory, a deploy whose replicas cannot start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
from turborank.testing import make_beir_dataset, make_checkpoint
from turborank.testing_server import free_port

pytestmark = pytest.mark.slow  # each test talks to a Ray cluster started for this module (10-20 s)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **extra}


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ray.scripts.scripts", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two heads on this machine: an open one, and one with token authentication."""
    open_port, token_port = free_port(), free_port()
    token = secrets.token_hex(32)
    started = _ray(
        "start",
        "--head",
        "--port",
        str(open_port),
        "--num-cpus",
        "2",
        "--include-dashboard=false",
        env=_env(),
    )
    assert started.returncode == 0, started.stderr
    token_env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    temp = tmp_path_factory.mktemp("raytoken")
    started = _ray(
        "start",
        "--head",
        "--port",
        str(token_port),
        "--num-cpus",
        "1",
        "--include-dashboard=false",
        "--temp-dir",
        str(temp),
        env=token_env,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield f"127.0.0.1:{open_port}", f"127.0.0.1:{token_port}", token
    finally:
        _ray("stop", "--force", env=_env())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("raycluster")
    ckpt = make_checkpoint(root / "ckpt", "small", seed=3)
    data = make_beir_dataset(root / "beir", n_queries=6, n_documents=40, long_documents=0)
    return root, ckpt, data


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=180
    )


def _broken_copy(ckpt: Path, where: Path) -> Path:
    """The checkpoint with a model.safetensors no node can read."""
    broken = where / "broken"
    broken.mkdir()
    for item in ckpt.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    return broken


def _eval(model: str, data: Path, output: Path, *extra: str, cwd: Path, env=None):
    command = [sys.executable, "-m", "turborank", "eval", "--model", model, "--data", str(data), "--bm25"]
    # One linear engine everywhere ("auto" times both at load, and a loaded machine can tip it).
    command += ["--top-k", "5", "--device", "cpu", "--linear", "aten", "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env or _env(), cwd=cwd, timeout=300)


def test_local_mode_starts_its_own_cluster_beside_a_running_one_with_a_relative_path(heads, inputs, tmp_path):
    """`--ray` on a head node: its own cluster (the running one is named, with how to use it), and
    a model path relative to the driver's directory, which the workers do not share."""
    root, ckpt, data = inputs
    single = _eval(ckpt.name, data, tmp_path / "single.trec", cwd=root)
    assert single.returncode == 0, single.stderr
    done = _eval(ckpt.name, data, tmp_path / "ray.trec", "--ray", cwd=root)
    assert done.returncode == 0, done.stderr
    assert "a Ray cluster already runs here" in done.stderr and "--ray auto" in done.stderr
    assert (tmp_path / "ray.trec").read_bytes() == (tmp_path / "single.trec").read_bytes()
    joined = _eval(ckpt.name, data, tmp_path / "joined.trec", "--ray", heads[0], cwd=root)
    assert joined.returncode == 0, joined.stderr
    assert (tmp_path / "joined.trec").read_bytes() == (tmp_path / "single.trec").read_bytes()


def test_a_missing_model_path_fails_on_the_driver_before_any_task(heads, inputs, tmp_path):
    root, _, data = inputs
    done = _eval("no-such-ckpt", data, tmp_path / "ray.trec", "--ray", heads[0], cwd=root)
    assert done.returncode == 1
    assert "no-such-ckpt: no such checkpoint directory" in done.stderr
    assert "Connecting to existing Ray cluster" not in done.stderr  # refused before joining


def test_a_model_a_worker_cannot_load_names_the_node(heads, inputs, tmp_path):
    root, ckpt, data = inputs
    broken = _broken_copy(ckpt, tmp_path)
    done = _eval(str(broken), data, tmp_path / "ray.trec", "--ray", heads[0], cwd=root)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "loading the model on Ray node" in last and "model.safetensors" in last, done.stderr


@pytest.mark.parametrize("where", ["nothing", "not ray"])
def test_an_address_that_does_not_answer_fails_in_bounded_time(inputs, tmp_path, where):
    root, ckpt, data = inputs
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if where == "not ray":
        listener.listen()  # accepts TCP, never speaks Ray
    else:
        listener.close()
    start = time.monotonic()
    done = _eval(
        str(ckpt), data, tmp_path / "ray.trec", "--ray", f"127.0.0.1:{port}", "--ray-timeout", "3", cwd=root
    )
    seconds = time.monotonic() - start
    listener.close()
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    wanted = "nothing answers" if where == "nothing" else "not as a Ray cluster"
    assert wanted in last and "--ray-timeout" in last, done.stderr
    assert seconds < 30  # Ray's own retries run for minutes


def test_a_cluster_that_refuses_the_token_says_what_to_set(heads, inputs, tmp_path):
    root, ckpt, data = inputs
    _, token_address, token = heads
    done = _eval(str(ckpt), data, tmp_path / "ray.trec", "--ray", token_address, cwd=root)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "refused this process's authentication" in last and "RAY_AUTH_TOKEN" in last, done.stderr
    with_token = _eval(
        str(ckpt),
        data,
        tmp_path / "ray.trec",
        "--ray",
        token_address,
        cwd=root,
        env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
    )
    assert with_token.returncode == 0, with_token.stderr


def test_a_failed_deploy_tears_down_what_it_started(heads, inputs, tmp_path):
    """Replicas that cannot load the model: one line naming their error, exit 1, and neither the
    application nor Serve's controller and proxy left on the cluster (the port is free again)."""
    _, ckpt, _ = inputs
    broken = _broken_copy(ckpt, tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "turborank", "serve", "--model", broken.name, "--device", "cpu"]
    command += ["--port", str(port), "--ray", heads[0], "--replicas", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "the replica could not start: ValueError: loading the model on Ray node" in last, done.stderr
    check = (
        "import ray\n"
        f"ray.init(address={heads[0]!r}, log_to_driver=False)\n"
        "try:\n"
        "    ray.get_actor('SERVE_CONTROLLER_ACTOR', namespace='serve')\n"
        "    print('serve running')\n"
        "except ValueError:\n"
        "    print('serve gone')\n"
    )
    probe = _python(check)
    assert probe.stdout.strip() == "serve gone", probe.stderr
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the proxy let go of it


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the replicas through /proc")
def test_model_replicas_killed_under_load_lose_no_accepted_request(tmp_path):
    """SIGKILL a model replica twice while clients keep requests in flight: each request is
    answered with its scores (the front passed it to the other replica) or with the API's JSON 503
    and Retry-After; none gets Ray's plain-text 500, a reset or a timeout. With Ray's proxy in front
    the same run lost requests (benchmarks/results/ray_replica_soak_ray_proxy_*)."""
    from benchmarks.serve.ray_replica_soak import run_soak

    result = run_soak(seconds=30, clients=4, kill_every=10, replicas=2, workdir=tmp_path)
    assert len(result["kills_at_s"]) == 2, result
    assert result["counts"]["lost"] == 0, result
    assert result["counts"]["ok"] > 20 and result["server_exit_code"] == 0, result


def test_the_local_cluster_is_this_machines_cores_whatever_the_task_size(inputs, tmp_path):
    """Tasks of --ray-cpus-per-worker cores each on a cluster of exactly the machine's cores: Ray
    never runs more at once than the cores hold (it ran cores x 2 threads before)."""
    code = (
        "import os, ray\n"
        "from turborank.eval.ray_runs import RayPlan, connect\n"
        "connect(RayPlan(cpus_per_worker=min(2, os.cpu_count())))\n"
        "print(int(ray.cluster_resources()['CPU']), os.cpu_count())\n"
        "ray.shutdown()\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    cluster, cores = done.stdout.split()
    assert cluster == cores
    root, ckpt, data = inputs
    too_wide = _eval(str(ckpt), data, tmp_path / "r.trec", "--ray", "--ray-cpus-per-worker", "4096", cwd=root)
    assert too_wide.returncode == 1 and "this machine has" in too_wide.stderr.splitlines()[-1]
