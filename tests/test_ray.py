"""Ray backend: a 2-CPU local cluster trains a tiny run, a killed worker is retried, and the
members equal a local run's bit for bit; resource defaults and refusals are checked by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emodistill.cli import main
from emodistill.core.checkpoints import load_arrays, read_json
from emodistill.core.errors import InputError
from emodistill.methods.backends.local import train_run
from emodistill.methods.backends.ray import (
    MemberResources,
    import_ray,
    member_resources,
    read_attempts,
    shared_path,
    train_run_ray,
)
from emodistill.run import Run, RunConfig, TrainConfig

# lr_step 1 is what the command line derives for --epochs 1, so the CLI can resume these runs.
TINY = TrainConfig(epochs=1, lr_step=1, batches_per_epoch=2, clip_length=8)
TINY_FLAGS = ["--preset", "tiny", "--members", "2", "--generations", "1", "--seed", "11",
              "--epochs", "1", "--batches-per-epoch", "2", "--clip-length", "8", "--quiet"]
MEMBERS = [(generation, member) for generation in (0, 1) for member in (0, 1)]
KILL_WAIT_S = 120  # give up waiting for the first attempt after this long (a broken run)
GPU_NODE = {"CPU": 16.0, "GPU": 8.0}


def tiny_config(data: Path, **changes) -> RunConfig:
    values = {"data": str(data), "preset": "tiny", "members": 2, "generations": 1, "seed": 11,
              "train": TINY, **changes}
    return RunConfig(**values)


def silent(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


class FirstAttemptKiller(threading.Thread):
    """SIGKILLs the worker of one member as soon as its first attempt is logged."""

    def __init__(self, run: Run, generation: int, member: int):
        super().__init__(daemon=True)
        self.log_path = run.attempts_path(generation, member)
        self.finished = lambda: run.is_complete(generation, member)
        self.stop = threading.Event()
        self.killed_pid: int | None = None
        self.finished_before_kill = False  # True would mean the kill was not mid-task

    def run(self) -> None:
        deadline = time.monotonic() + KILL_WAIT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.log_path.exists():
                pid = read_json(self.log_path)[0]["pid"]
                self.finished_before_kill = self.finished()
                os.kill(pid, signal.SIGKILL)
                self.killed_pid = pid
                return
            time.sleep(0.002)


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same tiny run (2 members, teacher + 1 student) trained locally and on Ray, both on
    one PyTorch thread; on Ray the worker of teacher member 0 is killed mid-task."""
    root = tmp_path_factory.mktemp("ray-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray tasks below take 1 CPU, hence 1 thread
    try:
        train_run(root / "local", tiny_config(tiny_data), torch.device("cpu"), progress=False,
                  log=silent)
    finally:
        torch.set_num_threads(threads)
    ray_root = root / "ray"
    killer = FirstAttemptKiller(Run(ray_root), 0, 0)
    killer.start()
    logs: list[str] = []
    try:
        train_run_ray(ray_root, tiny_config(tiny_data), cpus_per_member=1, max_retries=2,
                      progress=False, log=logs.append)
    finally:
        killer.stop.set()
        killer.join()
    return Run(root / "local"), Run(ray_root), logs, killer


def weights_of(run: Run, generation: int, member: int) -> dict[str, torch.Tensor]:
    return load_file(str(run.weights_path(generation, member)))


@pytest.mark.ray
def test_killed_worker_is_retried_and_its_member_finishes(runs) -> None:
    _, ray_run, logs, killer = runs
    assert killer.killed_pid is not None, "the first attempt at teacher member 0 never started"
    assert not killer.finished_before_kill, "teacher member 0 finished before its worker was killed"
    attempts = read_attempts(ray_run, 0, 0)
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["pid"] == killer.killed_pid != attempts[1]["pid"]
    assert all(a["threads"] == 1 and a["device"] == "cpu" for a in attempts)
    for generation, member in MEMBERS[1:]:
        assert len(read_attempts(ray_run, generation, member)) == 1, (generation, member)
    assert all(ray_run.is_complete(g, m) for g, m in MEMBERS)
    assert any(line.startswith("teacher member 0:") and line.endswith("attempt 2") for line in logs)
    assert not list(ray_run.root.rglob("*.tmp")), "a half-written file was left behind"


@pytest.mark.ray
def test_ray_members_equal_local_members_bit_for_bit(runs) -> None:
    local_run, ray_run, _, _ = runs
    for generation, member in MEMBERS:
        local = weights_of(local_run, generation, member)
        remote = weights_of(ray_run, generation, member)
        assert local.keys() == remote.keys()
        for key in local:
            assert torch.equal(local[key], remote[key]), (generation, member, key)
        local_record = read_json(local_run.record_path(generation, member))
        remote_record = read_json(ray_run.record_path(generation, member))
        assert remote_record["seed"] == local_record["seed"]
        assert remote_record["scores"] == local_record["scores"]
    local_soft = load_arrays(local_run.soft_labels_path(0))
    remote_soft = load_arrays(ray_run.soft_labels_path(0))
    assert local_soft.keys() == remote_soft.keys() and local_soft
    for task in local_soft:
        assert np.array_equal(local_soft[task], remote_soft[task]), task


@pytest.mark.ray
def test_rerun_from_the_command_line_trains_only_the_missing_member(runs, tmp_path: Path,
                                                                     capsys) -> None:
    _, finished, _, _ = runs
    run = Run(tmp_path / "run")
    shutil.copytree(finished.root, run.root)
    run.record_path(0, 1).unlink()
    run.weights_path(0, 1).unlink()
    kept = [run.record_path(0, 0), run.soft_labels_path(0), run.record_path(1, 0),
            run.record_path(1, 1)]
    mtimes = [path.stat().st_mtime_ns for path in kept]
    data = read_json(run.config_path)["data"]
    assert main(["train", "--data", data, "--out", str(run.root), *TINY_FLAGS, "--device", "cpu",
                 "--backend", "ray", "--cpus-per-member", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("teacher member 0", "student1 member 0", "student1 member 1"):
        assert f"{name}: already trained, kept" in out
    assert "teacher member 1: best epoch" in out
    assert [path.stat().st_mtime_ns for path in kept] == mtimes
    assert len(read_attempts(run, 0, 0)) == 2 and len(read_attempts(run, 0, 1)) == 2
    retrained, first = weights_of(run, 0, 1), weights_of(finished, 0, 1)
    assert all(torch.equal(retrained[key], first[key]) for key in first)


@pytest.mark.ray
def test_an_error_inside_a_member_is_reported_once_and_not_retried(ray_cluster, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    # The driver checks that the file exists; what is inside is read by the member.
    missing = tmp_path / "not-a-backbone.safetensors"
    missing.write_bytes(b"not a checkpoint")
    config = tiny_config(tiny_data, members=1, generations=0, backbone_weights=str(missing))
    with pytest.raises(InputError) as error:
        train_run_ray(tmp_path / "run", config, cpus_per_member=1, max_retries=2, progress=False,
                      log=silent)
    message = str(error.value)
    assert message.startswith("teacher members, member 0: ") and str(missing) in message
    assert "Traceback" not in message and "\n" not in message
    assert len(read_attempts(Run(tmp_path / "run"), 0, 0)) == 1


@pytest.mark.parametrize(
    ("nodes", "members", "flags", "cpus", "gpus"),
    [
        ([{"CPU": 2.0}], 2, {}, 1, 0),
        ([{"CPU": 64.0}], 5, {}, 12, 0),  # 64 // 5
        ([{"CPU": 16.0}, {"CPU": 8.0}], 3, {}, 8, 0),  # 24 // 3
        ([{"CPU": 16.0}, {"CPU": 8.0}], 1, {}, 16, 0),  # no more than the largest node
        ([GPU_NODE], 5, {}, 2, 1),  # 16 CPUs shared by 8 GPUs
        ([GPU_NODE], 5, {"gpus_per_member": 0.5}, 1, 0.5),  # 16 slots on 8 GPUs
        ([GPU_NODE], 5, {"device": "cpu"}, 3, 0),  # 16 // 5
        ([GPU_NODE], 5, {"cpus_per_member": 4.0}, 4, 1),
        ([GPU_NODE, {"CPU": 64.0, "GPU": 2.0}], 5, {}, 2, 1),  # every GPU node can fill its GPUs
    ],
)
def test_member_resources_defaults(nodes, members, flags, cpus, gpus) -> None:
    assert member_resources(nodes, members, **flags) == MemberResources(cpus=cpus, gpus=gpus)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"device": "cuda"}, "the largest node of the Ray cluster has 0"),
        ({"gpus_per_member": 2.0}, "must be between 0 and 1"),
        ({"device": "cpu", "gpus_per_member": 1.0}, "contradicts --device cpu"),
        ({"cpus_per_member": 4.0}, "no node of the Ray cluster has that many CPUs"),
        ({"cpus_per_member": 0.0}, "must be above 0"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_member_resources_refuses_what_the_cluster_cannot_give(flags, message) -> None:
    with pytest.raises(InputError) as error:
        member_resources([{"CPU": 2.0}], 2, **flags)
    assert message in str(error.value)


def test_threads_follow_the_cpu_request() -> None:
    assert MemberResources(cpus=0.5, gpus=0.0).threads == 1
    assert MemberResources(cpus=3.0, gpus=1.0).threads == 3
    assert MemberResources(cpus=3.0, gpus=1.0).device == "cuda"


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(InputError) as error:
        import_ray()
    assert str(error.value) == "--backend ray needs Ray: pip install 'emodistill[ray]'"


def test_run_folder_must_be_a_shared_path_not_a_uri(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    for uri in ("s3://bucket/run", Path("gs://bucket/run")):  # argparse's Path gives gs:/bucket
        with pytest.raises(InputError, match="is a URI"):
            shared_path(uri)
    monkeypatch.chdir(tmp_path)
    assert shared_path("runs/a") == tmp_path / "runs" / "a"
