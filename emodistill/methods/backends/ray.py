"""The Ray backend: every member, and every member's soft-label pass, is a task on a cluster.

Same seeds, files and resume rules as the local backend; Ray only decides where work runs.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from emodistill.core.checkpoints import load_arrays, read_json, write_json
from emodistill.core.errors import InputError
from emodistill.core.runtime import tune_allocator
from emodistill.methods.distillation import (
    distil,
    ensemble_probs,
    load_data,
    make_soft_labels,
    start_run,
    summary_line,
    train_generation_member,
)
from emodistill.methods.losses import ClassWeights
from emodistill.run import Run, RunConfig, generation_name

DEVICES = ("auto", "cpu", "cuda")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # s3://..., gs://... (Path turns :// into :/)


@dataclass(frozen=True)
class MemberResources:
    """What one member task asks Ray for, and how it then trains."""

    cpus: float  # Ray CPU slots per task; also its PyTorch threads (rounded down, at least 1)
    gpus: float  # Ray GPUs per task: 0 trains on CPU, 1 owns a GPU, 0.5 shares one GPU by two

    @property
    def threads(self) -> int:
        """PyTorch threads: fixed by the request, so results do not depend on the node."""
        return max(1, int(self.cpus))

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def __str__(self) -> str:
        gpu = f"{self.gpus:g} GPU + " if self.gpus > 0 else ""
        return f"{gpu}{self.cpus:g} CPU ({self.threads} PyTorch thread{'s' * (self.threads > 1)})"


def import_ray() -> Any:
    """The `ray` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--backend ray needs Ray: pip install 'emodistill[ray]'") from None
    return ray


def shared_path(path: Path | str, what: str = "--out") -> Path:
    """An absolute local path that every node must see the same; URIs are refused."""
    if URI.match(str(path)):
        raise InputError(f"{what} {path} is a URI; the Ray backend needs a folder that every node "
                         "mounts at the same path (NFS, Lustre, a single node's disk)")
    return Path(path).absolute()


def worker_config(config: RunConfig) -> RunConfig:
    """`config` with its data and backbone paths absolute, as the driver sees them.

    Workers may start in another folder; run.json keeps the paths as the user gave them.
    """
    weights = config.backbone_weights
    return replace(
        config,
        data=str(shared_path(config.data, "--data")),
        backbone_weights=str(shared_path(weights, "--backbone-weights")) if weights else None,
    )


def member_resources(
    nodes: Sequence[Mapping[str, float]],
    members: int,
    device: str = "auto",
    gpus_per_member: float | None = None,
    cpus_per_member: float | None = None,
) -> MemberResources:
    """Each member task's CPUs and GPUs, from the flags or, when unset, from the cluster's nodes.

    `nodes` holds each live node's Ray resources ({"CPU": 16.0, "GPU": 8.0, ...}). Defaults: a
    GPU per member when the cluster has GPUs (device auto), and the CPUs of a GPU node shared
    among its GPUs; on CPUs only, the cluster's CPUs shared among the members.
    """
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; expected {', '.join(DEVICES)}")
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if gpus_per_member is None:
        gpus = 0.0 if device == "cpu" or (device == "auto" and most_gpus == 0) else 1.0
    else:
        gpus = float(gpus_per_member)
    if not 0 <= gpus <= 1:
        raise InputError(f"--gpus-per-member must be between 0 and 1 (a member trains on one GPU; "
                         f"0.5 puts two members on each GPU), got {gpus:g}")
    if (gpus > 0 and device == "cpu") or (gpus == 0 and device == "cuda"):
        raise InputError(f"--gpus-per-member {gpus:g} contradicts --device {device}")
    if gpus > most_gpus:
        raise InputError(f"each member asks for {gpus:g} GPU, but the largest node of the Ray "
                         f"cluster has {most_gpus:g}; start nodes with GPUs "
                         "(ray start --num-gpus N) or use --device cpu")
    if cpus_per_member is None:
        if gpus > 0:
            gpu_nodes = [n for n in nodes if n.get("GPU", 0.0) >= gpus]
            cpus = min(max(1, math.floor(n.get("CPU", 0.0) / math.floor(n["GPU"] / gpus)))
                       for n in gpu_nodes)
        else:
            total_cpus = math.floor(sum(n.get("CPU", 0.0) for n in nodes))
            cpus = max(1, min(math.floor(most_cpus), total_cpus // max(members, 1)))
    else:
        cpus = cpus_per_member
    if cpus <= 0:
        raise InputError(f"--cpus-per-member must be above 0, got {cpus:g}")
    if cpus > most_cpus:
        raise InputError(f"--cpus-per-member {cpus:g}: no node of the Ray cluster has that many "
                         f"CPUs (the largest has {most_cpus:g})")
    return MemberResources(cpus=float(cpus), gpus=gpus)


def read_attempts(run: Run, generation: int, member: int) -> list[dict]:
    """Every attempt the Ray backend made at one member, oldest first (empty if none)."""
    path = run.attempts_path(generation, member)
    return read_json(path) if path.exists() else []


def _log_attempt(run: Run, generation: int, member: int, resources: MemberResources) -> None:
    # One attempt runs at a time (Ray retries only after a worker died), so no write races here.
    attempts = read_attempts(run, generation, member)
    attempts.append({
        "attempt": len(attempts) + 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": resources.device,
        "threads": resources.threads,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    write_json(run.attempts_path(generation, member), attempts)


def _worker_setup(root: str, resources: MemberResources) -> tuple[Run, torch.device]:
    """The run folder as this worker sees it, and its device; threads set as requested."""
    tune_allocator()
    # Ray sets OMP_NUM_THREADS from num_cpus, and 1 for fractions; the thread count changes
    # the order of CPU reductions, so it is set here, the same on every node and every retry.
    torch.set_num_threads(resources.threads)
    run = Run(Path(root))
    if not run.exists():
        raise InputError(f"{root} is not visible on Ray node {socket.gethostname()}; --out must be "
                         "a folder that every node mounts at the same path")
    if resources.gpus > 0 and not torch.cuda.is_available():
        raise InputError(f"Ray gave a member a GPU on node {socket.gethostname()}, but PyTorch "
                         "there sees no CUDA; install a CUDA build of torch on every GPU node")
    return run, torch.device(resources.device)


def _quiet(_: str) -> None:
    """A `log` that drops the data summaries each worker would repeat."""


def train_member_task(
    root: str,
    config: RunConfig,
    generation: int,
    member: int,
    class_weights: dict[str, list[float]],
    resources: MemberResources,
) -> dict:
    """Body of a member's Ray task: train it and write its weights, then its record.

    `class_weights` travel as plain lists: arrays from Ray's object store are read-only.
    """
    run, device = _worker_setup(root, resources)
    _log_attempt(run, generation, member, resources)
    train, val = load_data(config, progress=False, log=_quiet)
    soft_labels = None if generation == 0 else load_arrays(run.soft_labels_path(generation - 1))
    return train_generation_member(run, config, generation, member, train, val,
                                   ClassWeights.from_dict(class_weights), device, soft_labels,
                                   progress=False)


def member_probs_task(
    root: str, config: RunConfig, generation: int, member: int, resources: MemberResources
) -> dict[str, np.ndarray]:
    """Body of a soft-label shard: one member's probabilities on every training frame."""
    run, device = _worker_setup(root, resources)
    train, _ = load_data(config, progress=False, log=_quiet)
    return ensemble_probs([run.load_member(generation, member, device)], train, device, config)[0]


def _failure(ray: Any, error: Exception, name: str, max_retries: int) -> Exception:
    """What the driver raises for a failed task: a user error or a dead worker as one sentence."""
    if isinstance(error, ray.exceptions.RayTaskError):
        if isinstance(error.cause, InputError):
            return InputError(f"{name}: {error.cause}")
        return error  # a bug: keep the worker's traceback
    every = f" on all {max_retries + 1} attempts" if max_retries else ""
    return InputError(
        f"{name}: its Ray worker died{every} ({type(error).__name__}), often from running out of "
        "memory; finished members are kept, so give each member more with "
        "--cpus-per-member/--gpus-per-member and rerun the command"
    )


def _wait_all(
    ray: Any,
    tasks: Mapping[Any, int],
    on_result: Callable[[int, Any], None],
    what: str,
    max_retries: int,
    progress: bool,
) -> None:
    """Wait for every task (object ref -> member), handing each result over as it comes.

    A failed task does not stop the others: every member that can finish is kept, then the
    first failure is raised.
    """
    pending = list(tasks)
    failures: list[Exception] = []
    with tqdm(total=len(pending), desc=what, unit="task", disable=not progress, leave=False) as bar:
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                member = tasks[ready[0]]
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as error:
                    name = f"{what}, member {member}"
                    failures.append(_failure(ray, error, name, max_retries))
                else:
                    with tqdm.external_write_mode():
                        on_result(member, result)
                bar.update()
        except BaseException:
            # Ctrl-C: stop the remaining tasks even when the cluster outlives this call; files
            # are written atomically, so a killed task leaves nothing a rerun would trust.
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    if failures:
        raise failures[0]


@dataclass
class RayBackend:
    """A run being trained on a connected Ray cluster: submits tasks and collects their files."""

    ray: Any  # the imported ray module
    run: Run
    config: RunConfig  # as stored in run.json
    n_train: int  # training frames, so stored soft labels can be checked
    tasks: tuple[str, ...]  # tasks with training labels
    class_weights: ClassWeights
    resources: MemberResources
    max_retries: int  # retries of a task whose worker died
    progress: bool
    log: Callable[[str], None]
    where: str = " on Ray"

    def __post_init__(self) -> None:
        options = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus,
                   "max_retries": self.max_retries, "retry_exceptions": False}
        self.train_task = self.ray.remote(train_member_task).options(**options)
        self.probs_task = self.ray.remote(member_probs_task).options(**options)
        self.remote_args = (str(self.run.root), worker_config(self.config))

    def soft_labels(self, generation: int) -> None:
        """Soft labels of `generation` for the next one: a task per member, averaged here."""
        def member_probs() -> list[dict[str, np.ndarray]]:
            refs = {self.probs_task.remote(*self.remote_args, generation, m, self.resources): m
                    for m in range(self.config.members)}
            found: dict[int, dict[str, np.ndarray]] = {}
            _wait_all(self.ray, refs, found.__setitem__, f"{generation_name(generation)} soft labels",
                      self.max_retries, self.progress)
            return [found[member] for member in range(self.config.members)]  # member order, whoever finished first

        make_soft_labels(self.run, generation, self.n_train, self.tasks, member_probs)

    def train_members(self, generation: int, members: Sequence[int]) -> None:
        """Train these members of `generation` in parallel."""
        weights = self.class_weights.as_dict()
        refs = {self.train_task.remote(*self.remote_args, generation, member, weights, self.resources): member
                for member in members}

        def report(member: int, record: dict) -> None:
            attempts = read_attempts(self.run, generation, member)
            where = f", on {attempts[-1]['host']}" if attempts else ""
            again = f", attempt {len(attempts)}" if len(attempts) > 1 else ""
            self.log(f"{summary_line(record)}{where}{again}")

        _wait_all(self.ray, refs, report, f"{generation_name(generation)} members", self.max_retries,
                  self.progress)


def train_run_ray(
    root: Path | str,
    config: RunConfig,
    address: str | None = None,
    gpus_per_member: float | None = None,
    cpus_per_member: float | None = None,
    max_retries: int = 2,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Run:
    """Train (or continue) a run on Ray: the members of each generation as parallel tasks.

    `address` is a running cluster ("auto" on one of its nodes, or "HEAD_HOST:6379"); None
    connects to $RAY_ADDRESS if set, else starts Ray on this machine, unless this process is
    already connected to a cluster (then that one is used and left running). A member
    whose worker dies is retried up to `max_retries` times; an error in the member itself is
    not retried. Finished members, soft labels and the resume rules are those of the local `train_run`.
    """
    ray = import_ray()
    if max_retries < 0:
        raise InputError(f"--max-retries must be 0 or more, got {max_retries}")
    run = Run(shared_path(root))
    # The driver reads the data first, so the frame cache is built once, before workers map it.
    config, train, _, class_weights = start_run(run, config, progress, log)

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address)
        except ConnectionError:
            where = address or os.environ.get("RAY_ADDRESS", "")
            raise InputError(f"no Ray cluster answered at {where}; start one with `ray start "
                             "--head` on its head node, or leave --address out (and RAY_ADDRESS "
                             "unset) to start Ray on this machine") from None
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        resources = member_resources(nodes, config.members, device, gpus_per_member,
                                     cpus_per_member)
        cluster = ray.cluster_resources()
        log(f"Ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs on "
            f"{len(nodes)} node(s); each member task takes {resources}")
        backend = RayBackend(ray, run, config, len(train), train.tasks_present, class_weights,
                             resources, max_retries, progress, log)
        return distil(run, config, backend, log)
    finally:
        if started_here:
            ray.shutdown()
