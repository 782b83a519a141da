"""`check_fits`: refuse an allocation that cannot fit before making it, in one line (instead of
an out-of-memory kill of the whole process, or a CUDA OOM traceback).

Free memory: on CUDA what the driver reports free plus what torch's caching allocator holds
unused; on a CPU the kernel's MemAvailable (Linux). Where neither is known, nothing is refused.
"""

from __future__ import annotations

import torch

from .errors import CapacityError


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """CapacityError when `nbytes` for `what` exceed the memory free on `device`."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise CapacityError(f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB are free on {device}; "
                            "lower max_new_tokens, the budget or the prompt length")
