"""The process-group and device checks of `rlhflab preflight`: joining, every rank's config, data
and versions against rank 0's, all_reduce latency and bandwidth, and each rank's device and free
memory (docs/distributed.md, "Preflight")."""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch

from rlhflab.errors import UserError
from rlhflab.preflight import Check, config_hash

BIG = 64 * 1024 * 1024
"""Bytes of the large all_reduce (float32 elements)."""


def join(cfg: Any) -> tuple[Any, list[Check], float]:
    """Join the launcher's process group as `rlhflab train` does (the config's backend and timeouts;
    defaults when the config is invalid, so the other ranks still hear from this one). (None, [FAIL],
    seconds) when it cannot join."""
    from rlhflab.train.distributed import init_distributed, launched_world_size

    if launched_world_size() == 1:
        return init_distributed(), [Check("process group", "PASS", "one process (no launcher): no collectives")], 0.0
    t0 = time.perf_counter()
    try:
        if cfg is not None:
            from rlhflab.train.run import join_process_group

            ctx = join_process_group(cfg)
        else:
            ctx = init_distributed()
    except (UserError, RuntimeError) as e:  # CollectiveTimeout is a RuntimeError
        return None, [Check("process group", "FAIL", str(e), user=False)], time.perf_counter() - t0
    return ctx, [], time.perf_counter() - t0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from rlhflab import __version__

    try:
        transformers = version("transformers")
    except PackageNotFoundError:
        transformers = "none"
    return {"rlhflab": __version__, "torch": torch.__version__, "transformers": transformers,
            "python": platform.python_version()}


def identity(inputs: Any, join_s: float = 0.0) -> dict[str, Any]:
    """What every rank must agree on (config hash, data rows and digest, versions), and its host."""
    return {"config": config_hash(inputs.cfg) if inputs.cfg is not None else None, "data": inputs.data,
            "versions": versions(), "host": socket.gethostname(), "join_s": join_s}


def check_agreement(ctx: Any, mine: dict[str, Any]) -> list[Check]:
    """Gather every rank's identity (within distributed.timeouts.init) and compare it with rank 0's."""
    if not ctx.enabled:
        return []
    with ctx.phase("init"):
        infos = ctx.all_gather_object(mine)
    hosts = len({i["host"] for i in infos})
    rows = [Check("process group", "PASS", f"{ctx.backend}, {ctx.world_size} ranks on {hosts} host(s); the slowest "
                                           f"joined in {max(i['join_s'] for i in infos):.2f} s")]
    return rows + agreement(infos)


def _others(infos: list[dict[str, Any]], get: Any) -> list[int]:
    return [r for r, i in enumerate(infos) if get(i) != get(infos[0])]


def agreement(infos: list[dict[str, Any]]) -> list[Check]:
    """Lines for the config hash, the data and the versions of every rank against rank 0's."""
    rows = []
    bad = _others(infos, lambda i: i["config"])
    if bad:
        rows.append(Check("same config", "FAIL", "; ".join(
            f"rank {r} resolved a different config (hash {infos[r]['config']}; rank 0: {infos[0]['config']})" for r in bad)
            + ": start every rank with the same config file and overrides"))
    else:
        rows.append(Check("same config", "PASS", f"hash {infos[0]['config']} on all {len(infos)} ranks"))

    def data(i: dict[str, Any]) -> str:
        d = i["data"]
        return "no valid data" if d is None else f"{d['train']} train + {d['eval']} eval rows, sha256 {d['digest']}"

    bad = _others(infos, data)
    if bad:
        rows.append(Check("same data", "FAIL", "; ".join(f"rank {r} reads {data(infos[r])}" for r in bad)
                          + f" (rank 0: {data(infos[0])}): every rank must read the same files"))
    else:
        rows.append(Check("same data", "PASS", f"{data(infos[0])} on every rank"))
    diffs = [(r, k) for k in infos[0]["versions"] for r in _others(infos, lambda i: i["versions"].get(k))]
    if not diffs:
        v = infos[0]["versions"]
        rows.append(Check("same versions", "PASS", ", ".join(f"{k} {x}" for k, x in v.items())))
    for r, k in diffs:
        hard = k in ("rlhflab", "torch")
        rows.append(Check("same versions", "FAIL" if hard else "WARN",
                          f"rank {r} has {k} {infos[r]['versions'].get(k)}, rank 0 has {infos[0]['versions'][k]}",
                          user=not hard))
    return rows


# ---------------------------------------------------------------------------------------- collectives


def time_all_reduce(ctx: Any, numel: int, iters: int, group: Any, device: torch.device) -> float:
    """Median seconds of one all_reduce of `numel` float32 (after a warm-up), the slowest rank's."""
    import torch.distributed as dist

    t = torch.zeros(numel, dtype=torch.float32, device=device)
    times = []
    for i in range(iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        ctx._wait(dist.all_reduce(t, group=group, async_op=True), f"all_reduce of {numel * 4} bytes")  # noqa: SLF001
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return float(ctx.all_reduce(torch.tensor([median], dtype=torch.float64), "max").item())


def bandwidth_line(name: str, world: int, small_s: float, big_s: float) -> Check:
    """algbw = bytes / time; busbw = algbw x 2 (W - 1) / W, what each link carries in a ring all_reduce."""
    algbw = BIG / big_s / 1e9
    busbw = algbw * 2 * (world - 1) / world
    return Check(f"all_reduce ({name})", "PASS", f"4 B: {small_s * 1e3:.2f} ms; 64 MiB: {big_s * 1e3:.1f} ms = "
                                                 f"{algbw:.2f} GB/s algbw, {busbw:.2f} GB/s busbw (slowest rank)")


def check_collectives(ctx: Any) -> list[Check]:
    """all_reduce of 4 bytes and of 64 MiB on rlhflab's gloo group and, with nccl, on the default group
    (each within distributed.timeouts.step; a CollectiveTimeout names the rank that waited)."""
    if not ctx.enabled:
        return []
    groups = [("gloo group", ctx.group, torch.device("cpu"))]
    if ctx.backend == "nccl":
        groups.append(("nccl", None, torch.device("cuda", torch.cuda.current_device())))
    rows = []
    with ctx.phase("step"):
        for name, group, device in groups:
            small = time_all_reduce(ctx, 1, 10, group, device)
            big = time_all_reduce(ctx, BIG // 4, 3, group, device)
            rows.append(bandwidth_line(name, ctx.world_size, small, big))
    return rows


# ---------------------------------------------------------------------------------------- devices


def host_available() -> int | None:
    """Bytes of RAM available to this process: /proc/meminfo MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                room = int(limit) - int(g.read().strip())
                avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


@dataclass(frozen=True)
class Device:
    """What the memory plan is compared with."""

    type: str | None
    """cuda | cpu; None when the configured device is not there."""
    available: int | None = None
    """Bytes this rank may use: the GPU's free memory, or its share of the host's available RAM."""
    total: int | None = None
    """The GPU's total memory (what vLLM's gpu_memory_utilization is a fraction of)."""


def check_device(cfg: Any, ctx: Any) -> tuple[Device, list[Check]]:
    """GPUs against the node's processes, the device's name and free memory; on CPU the host's
    available RAM shared by the node's ranks."""
    from rlhflab.preflight import human_bytes
    from rlhflab.train.run import pick_device

    try:
        device = pick_device(cfg.device if cfg is not None else "auto", ctx.local_rank if ctx.enabled else None)
    except UserError as e:
        return Device(None), [Check("device", "FAIL", str(e), user=False)]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    if device.type == "cuda":
        return _cuda(device, local)
    avail = host_available()
    if avail is None:
        return Device("cpu"), [Check("device", "WARN", "cpu; available RAM unknown (no /proc/meminfo)")]
    share = avail // max(1, local)
    shared = f", shared by {local} local ranks = {human_bytes(share)} each" if local > 1 else ""
    return Device("cpu", share), [Check("device", "PASS", f"cpu: {human_bytes(avail)} RAM available{shared}")]


def _cuda(device: torch.device, local: int) -> tuple[Device, list[Check]]:
    from rlhflab.preflight import human_bytes

    count = torch.cuda.device_count()
    if local > count:
        line = Check("GPUs", "FAIL", f"{local} processes on this node but {count} GPU(s): start at most one process per "
                                     f"GPU (--nproc_per_node {count})", user=False)
    elif local < count:
        line = Check("GPUs", "WARN", f"{local} process(es) for {count} GPUs on this node: {count - local} idle "
                                     f"(torchrun --nproc_per_node {count} uses them all)")
    else:
        line = Check("GPUs", "PASS", f"{count} GPU(s), one process each")
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    name = torch.cuda.get_device_name(index)
    return Device("cuda", int(free), int(total)), [
        line, Check("device", "PASS", f"cuda:{index} {name}: {human_bytes(free)} free of {human_bytes(total)}")]


def check_engine(cfg: Any, algo: Any, device: Device) -> list[Check]:
    """The vLLM rollout engine (generation.backend: vllm) needs the vllm package and a CUDA device."""
    import importlib.util

    gen = getattr(algo, "gen_cfg", None)
    if getattr(gen, "backend", "hf") != "vllm":
        return []
    if device.type != "cuda":
        return [Check("rollout engine", "FAIL", "generation.backend vllm needs a CUDA GPU; use backend: hf on CPU",
                      user=False)]
    if importlib.util.find_spec("vllm") is None:
        return [Check("rollout engine", "FAIL", "generation.backend vllm: the vllm package is not installed "
                                                "(pip install 'rlhflab[vllm]')", user=False)]
    return [Check("rollout engine", "PASS", "vllm installed, on the CUDA device")]
