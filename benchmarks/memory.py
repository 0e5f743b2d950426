"""Peak memory of one call by the allocator's own accounting: torch profiler events on CPU, CUDA stats on GPU.

Process RSS is useless here (glibc keeps freed pages, other threads allocate); the profiler records every
allocation and free the CPU allocator makes, so the peak of their running sum is the true high-water mark
of tensor memory while the call runs, counted from zero at its start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def _walk(nodes: Iterable) -> Iterable:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def _allocation_events(prof: profile) -> list[tuple[int, int]]:
    """(time_ns, signed bytes) of every CPU allocation (+) and free (-) the profiler saw, in time order."""
    from torch._C._profiler import _EventType  # the typed event tree the memory profiler itself reads

    events = []
    for node in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
    events.sort()
    return events


def peak_of_running_sum(deltas: Iterable[int]) -> int:
    """Highest value the running sum of signed allocation sizes reaches (0 if it never rises above 0)."""
    running = peak = 0
    for delta in deltas:
        running += delta
        peak = max(peak, running)
    return peak


def cpu_profile(fn: Callable[[], object]) -> tuple[int, set[str]]:
    """(peak CPU tensor bytes of `fn()` above what was live before it, names of the operators it ran)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = peak_of_running_sum(delta for _, delta in _allocation_events(prof))
    return peak, {event.key for event in prof.key_averages()}


def operator_names(fn: Callable[[], object]) -> set[str]:
    """Names of the aten operators `fn()` dispatches (CPU side; also names the CUDA kernels' operators)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes of CPU tensor memory live at the worst moment of `fn()`, above what was live before it."""
    return cpu_profile(fn)[0]


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str = "cuda") -> int:
    """Bytes of CUDA memory `fn()` adds at its worst moment (max_memory_allocated above the starting level)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak extra memory of `fn()` on `device` by the allocator's accounting (see module docstring)."""
    if torch.device(device).type == "cuda":
        return cuda_peak_bytes(fn, device)
    return cpu_peak_bytes(fn)


def is_oom(err: BaseException) -> bool:
    """Whether `err` says the allocator ran out of memory (CUDA, CPU, or an allocation failure)."""
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or "out of memory" in text or "alloc" in text


def oom_reason(err: BaseException) -> str:
    """The one-line reason recorded in a row that ran out of memory."""
    return f"out of memory: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"
