"""Ray itself: starting or joining a cluster, what its nodes offer, and each trial's share of it."""

from __future__ import annotations

import os
import signal
import socket
from types import FrameType
from typing import Any

import paths
from selfstudy.errors import UserError
from selfstudy.rayconfig import RayConfig


def cluster_resources() -> dict[str, float]:
    """The resources of the biggest live node: a trial runs on one node, so per-trial shares come from it."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default=ray.cluster_resources())


def per_trial(cpus: int, gpus: int, trials_per_gpu: int = 1) -> dict[str, float]:
    """`trials_per_gpu` trials share each GPU where GPUs exist (with an equal share of the CPUs),
    else a trial takes all CPUs."""
    if not gpus:
        return {"cpu": max(1, cpus)}
    return {"cpu": max(1, cpus // (gpus * trials_per_gpu)), "gpu": 1 / trials_per_gpu}


def trial_resources(ray_config: RayConfig, cluster: dict[str, float] | None = None) -> dict[str, Any]:
    """CPUs/GPUs per trial: the Ray config's, or derived from what exists, so no trial waits forever.
    A trial of several workers (`workers_per_trial`): {"workers": N, "per_worker": {cpu, gpu},
    "strategy": the placement strategy}, refused when the cluster cannot place them all."""
    if ray_config.workers_per_trial > 1:
        return worker_resources(ray_config)
    if cluster is None:
        import torch

        cluster = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    have_gpu = int(cluster.get("GPU", 0))
    wanted = ray_config.resources_per_trial or per_trial(int(cluster.get("CPU", 1)), have_gpu,
                                                         ray_config.trials_per_gpu)
    if wanted.get("gpu", 0) > have_gpu:
        raise UserError(f"Ray config '{ray_config.name}' asks {wanted['gpu']} GPU per trial but there are "
                        f"{have_gpu}: lower resources_per_trial or run where GPUs exist")
    return dict(wanted)


def worker_resources(ray_config: RayConfig) -> dict[str, Any]:
    """The placement of a trial of `workers_per_trial` workers on the running Ray cluster."""
    import ray

    workers, total = ray_config.workers_per_trial, ray.cluster_resources()
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    each = {k.lower(): v for k, v in (ray_config.resources_per_worker or
                                      {"cpu": 1, **({"gpu": 1} if total.get("GPU") else {})}).items()}
    for kind in ("cpu", "gpu"):
        need, have = workers * each.get(kind, 0), total.get(kind.upper(), 0)
        biggest = max((node.get(kind.upper(), 0) for node in nodes), default=0)
        if need > have or each.get(kind, 0) > biggest:
            raise UserError(f"Ray config '{ray_config.name}': workers_per_trial = {workers} with {each.get(kind, 0):g} "
                            f"{kind.upper()} each needs {need:g} {kind.upper()}, but the cluster has {have:g} (at most "
                            f"{biggest:g} on one node): lower workers_per_trial or resources_per_worker, or add nodes")
    for kind in ("cpu", "gpu"):
        need, biggest = workers * each.get(kind, 0), max((node.get(kind.upper(), 0) for node in nodes), default=0)
        if ray_config.placement_strategy == "STRICT_PACK" and need > biggest:
            raise UserError(f"Ray config '{ray_config.name}': placement_strategy = 'STRICT_PACK' puts all {workers} "
                            f"workers on one node, but they need {need:g} {kind.upper()} and the biggest node has "
                            f"{biggest:g}: use 'PACK', or lower workers_per_trial or resources_per_worker")
    if ray_config.placement_strategy.startswith("STRICT_SPREAD") and workers > len(nodes):
        raise UserError(f"Ray config '{ray_config.name}': placement_strategy = 'STRICT_SPREAD' puts each of the "
                        f"{workers} workers on a node of its own, but the cluster has {len(nodes)} nodes: add nodes, "
                        "lower workers_per_trial, or use 'SPREAD'")
    return {"workers": workers, "per_worker": each, "strategy": ray_config.placement_strategy}


def placement(resources: dict[str, Any]) -> Any:
    """What `tune.with_resources` takes: the resources of a one-worker trial as they are; for
    several workers a placement group, a bundle per worker, the trial itself (rank 0) in the first."""
    if "workers" not in resources:
        return resources
    from ray.tune import PlacementGroupFactory

    bundle = {kind.upper(): amount for kind, amount in resources["per_worker"].items() if amount}
    return PlacementGroupFactory([bundle] * resources["workers"], strategy=resources["strategy"])


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at `-a HOST:PORT`: `ray.init` would wait for it forever."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UserError(f"-a {address}: give the head node's HOST:PORT (the --port of `ray start --head`), "
                        "e.g. -a 127.0.0.1:6379")
    hosts = [host]
    if host in ("localhost", "127.0.0.1", "::1"):  # Ray connects to this machine's network address instead
        import ray.util

        hosts.append(ray.util.get_node_ip_address())
    for where in hosts:
        try:
            socket.create_connection((where, int(port)), timeout=timeout_s).close()
        except OSError as err:
            raise UserError(f"-a {address}: no Ray cluster answers at {where}:{port} ({err.strerror or err}); start "
                            f"one with `ray start --head --port {port}` on {host}, or check the address") from None


def start_ray(address: str | None, quiet: bool) -> None:
    """Start Ray (or join the cluster at `address`, -a); workers see this checkout and its data
    and experiment folders. `quiet` (-q): the workers' output and Ray's warnings stay unshown."""
    import logging

    import ray

    if ray.is_initialized():  # a study's later stage
        return
    if address:
        check_address(address)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(paths.ROOT), os.environ.get("PYTHONPATH")])),
           "SELFSTUDY_EXP_DIR": str(paths.EXP_DIR), "SELFSTUDY_DATA_DIR": str(paths.DATA_DIR)}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                 logging_level=logging.ERROR if quiet else logging.WARNING,
                 runtime_env={"env_vars": env})
    except ConnectionError as err:  # e.g. `-a auto` with no cluster on this machine
        if not address:
            raise
        raise UserError(f"-a {address}: {str(err).strip().splitlines()[0].rstrip('.')}; start a cluster with "
                        "`ray start --head` or check the address") from None
    # Tune's own interruption hint names its Python API; `finish` names --resume instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    stop_on_sigterm()  # ray.init put its own handler in place, which kills the driver without a word


def terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (timeout, slurm, docker stop) does what Ctrl-C does: whoever handles SIGINT now
    (Tune, while it runs: trials stop and save their state) handles it."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """From now on SIGTERM interrupts this process as Ctrl-C does (exit 130, --resume continues)."""
    signal.signal(signal.SIGTERM, terminated)
