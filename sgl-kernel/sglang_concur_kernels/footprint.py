"""Per-agent KV-cache footprints from the slot owner map.

The controller keeps on the device an owner map ``slot_owner: int32[num_slots]``
(one entry per KV-cache token slot), updated at allocation time:

* ``a`` in ``[0, num_agents)``: slot held by agent ``a`` alone (its running
  request or its cached history);
* ``-1`` (:data:`FREE`): free slot, or a slot owned by no agent;
* ``-2`` (:data:`SHARED`): slot shared by more than one agent (a shared prefix
  in the radix tree). It is counted once, in the last bucket, never once per
  agent.

``agent_footprints(slot_owner, num_agents)`` returns counts of shape
``[num_agents + 1]``: entry ``a`` = slots owned by agent ``a``, last entry =
shared slots. Free slots are not counted.

Dispatch: a CUDA tensor goes to a Triton kernel, a CPU tensor to the plain-torch
reference :func:`agent_footprints_ref` (``torch.bincount``), unless
``use_kernel=True`` forces the kernel (on CPU this needs Triton's interpreter,
``TRITON_INTERPRET=1``; used by the tests).

Validation: the reference always validates and raises ``ValueError`` naming the
first bad value. The kernel path does NOT validate by default (it would cost a
reduction plus a device->host sync on the scheduler's hot path); out-of-range
owners are then *ignored* (masked out of the atomics, never written out of
bounds), so a corrupt map under-counts instead of corrupting memory. Pass
``validate=True`` (or call :func:`validate_slot_owner`) to check.

Triton is imported lazily, inside the functions that launch a kernel, so
importing this module never fails on a machine without a working Triton
backend (CPU-only CI, the CPU shim).

Kernel design (goal: >= 70% of device copy bandwidth on an H100 at 1M slots and
10k agents; to be measured with ``benchmark/kernel_footprint_bench.py``):

* One pass over the owner map: each element is read from DRAM once, with
  128-bit vector loads (tile offsets are ``pid * BLOCK + arange`` and torch
  allocations are 16-byte aligned, so Triton emits ld.global.v4). The only
  other traffic is the (tiny) output vector and its atomics.
* Atomics are the risk, not the read: one atomic per slot would be 1M atomics
  for a 4 MB read. Two strategies cut that down:

  - ``runs`` (default for many agents): owner maps are run-heavy because the
    allocator hands out contiguous slot ranges. Within a tile we find runs of
    equal owners (each slot is compared with its neighbours, exchanged in
    registers with ``tl.gather``, so no extra global loads) and emit ONE
    atomic per run, at the run's last slot, adding the run length (the run
    start comes from an inclusive max-scan of start positions). Runs of ~256
    slots mean ~1 atomic per 256 slots. For a fully random map with many agents this
    degrades to ~1 atomic per slot spread over many addresses (little
    contention, but atomic-throughput bound); no per-tile scheme can do much
    better there because a tile of 2k random owners among 10k agents holds
    ~2k distinct values.
  - ``hist`` (default when ``num_agents + 2 <= HIST_MAX_BINS``): a persistent
    grid (a few programs per SM) where each program builds a local histogram
    of all its tiles with ``tl.histogram`` (shared memory / registers), then
    atomically adds only the non-zero bins once at the end. Atomics are
    bounded by ``programs * (num_agents + 1)`` whatever the data, which is
    what small agent counts with fragmented maps need (random owners among
    100 agents would otherwise hammer 100 addresses).

* Atomics use ``sem="relaxed"`` (no fences; counts are only read after the
  kernel completes).
* Output is zeroed with ``out.zero_()`` (a memset) before the kernel unless
  ``accumulate=True``.

The thresholds/tile sizes below are first guesses; the microbenchmark sweeps
both modes so a GPU session can tune :data:`HIST_MAX_BINS`.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = [
    "FREE",
    "SHARED",
    "HIST_MAX_BINS",
    "agent_footprints",
    "agent_footprints_ref",
    "agent_footprints_kernel",
    "validate_slot_owner",
    "choose_mode",
]

FREE = -1
SHARED = -2

# Auto mode uses the per-program histogram when num_agents + 2 bins fit here
# (power of two). Bigger histograms cost registers/shared memory per program.
HIST_MAX_BINS = 128
# Hard cap for an explicitly requested hist mode (4096 bins spill registers).
_HIST_HARD_CAP = 1024

RUNS_BLOCK = 2048
RUNS_NUM_WARPS = 4
HIST_BLOCK = 2048
HIST_NUM_WARPS = 4
HIST_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 4  # persistent-grid size under TRITON_INTERPRET


# ----------------------------------------------------------------------------
# Validation and torch reference
# ----------------------------------------------------------------------------


def _check_args(slot_owner: torch.Tensor, num_agents: int) -> None:
    if not isinstance(slot_owner, torch.Tensor):
        raise TypeError(f"slot_owner must be a torch.Tensor, got {type(slot_owner).__name__}")
    if slot_owner.dim() != 1:
        raise ValueError(f"slot_owner must be 1-D, got shape {tuple(slot_owner.shape)}")
    if slot_owner.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"slot_owner must be int32 (or int64), got {slot_owner.dtype}")
    if isinstance(num_agents, bool) or not isinstance(num_agents, int):
        raise TypeError(f"num_agents must be an int, got {type(num_agents).__name__}")
    if num_agents < 0:
        raise ValueError(f"num_agents must be >= 0, got {num_agents}")
    if num_agents >= 2**31 - 2:
        raise ValueError(f"num_agents too large: {num_agents}")


def validate_slot_owner(slot_owner: torch.Tensor, num_agents: int) -> None:
    """Raise ``ValueError`` if some owner is outside ``[-2, num_agents)``.

    The message names the first bad value and its slot index. On a CUDA tensor
    this synchronizes with the device.
    """
    _check_args(slot_owner, num_agents)
    if slot_owner.numel() == 0:
        return
    bad = (slot_owner < SHARED) | (slot_owner >= num_agents)
    if bool(bad.any()):
        idx = int(torch.nonzero(bad)[0].item())
        val = int(slot_owner[idx].item())
        n_bad = int(bad.sum().item())
        raise ValueError(
            f"slot_owner[{idx}] = {val} is out of range: owners must be in "
            f"[-2, num_agents) = [-2, {num_agents}) "
            f"(-2 = shared, -1 = free, 0..{num_agents - 1} = agent); "
            f"{n_bad} bad slot(s) in total"
        )


def _check_out(out: torch.Tensor, num_agents: int, device: torch.device) -> None:
    if out.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"out must be int32 or int64, got {out.dtype}")
    if tuple(out.shape) != (num_agents + 1,):
        raise ValueError(f"out must have shape ({num_agents + 1},), got {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device}, slot_owner on {device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")


def agent_footprints_ref(
    slot_owner: torch.Tensor,
    num_agents: int,
    out: Optional[torch.Tensor] = None,
    *,
    accumulate: bool = False,
) -> torch.Tensor:
    """Plain-torch reference (``torch.bincount``); always validates.

    Returns int32 counts of shape ``[num_agents + 1]`` (or writes ``out``):
    entries ``0..num_agents-1`` per agent, the last entry the shared slots.
    """
    validate_slot_owner(slot_owner, num_agents)
    if out is not None:
        _check_out(out, num_agents, slot_owner.device)
    # shift: -2 (shared) -> 0, -1 (free) -> 1, agent a -> a + 2
    counts = torch.bincount(slot_owner.to(torch.int64) + 2, minlength=num_agents + 2)
    res = torch.cat([counts[2:], counts[:1]])
    if out is None:
        return res.to(torch.int32)
    if accumulate:
        out.add_(res.to(out.dtype))
    else:
        out.copy_(res)
    return out


# ----------------------------------------------------------------------------
# Triton kernels (built lazily)
# ----------------------------------------------------------------------------


def _interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Filled by _build_kernels(): Triton resolves names used inside a @triton.jit
# body through the module globals (closures are not supported), and the scan
# combine function must itself be a jit function.
tl = None
_max_combine = None
_KERNELS = None
_KERNELS_INTERPRET = None


def _max_combine_body(a, b):
    return tl.maximum(a, b)


def _build_kernels(interpret: bool):
    """Define the kernels on first use. ``triton.jit`` picks JIT vs. interpreter
    at decoration time from TRITON_INTERPRET, so the mode is fixed per process."""
    global tl, _max_combine, _KERNELS, _KERNELS_INTERPRET
    if _KERNELS is not None:
        if interpret != _KERNELS_INTERPRET:
            raise RuntimeError(
                f"footprint kernels were built with TRITON_INTERPRET={int(_KERNELS_INTERPRET)}; "
                "it cannot change within a process"
            )
        return _KERNELS
    import triton
    import triton.language as _tl_mod

    tl = _tl_mod
    _max_combine = triton.jit(_max_combine_body)

    @triton.jit
    def footprint_runs_kernel(
        owner_ptr,
        out_ptr,
        n,
        num_agents,
        BLOCK: tl.constexpr,
    ):
        # One tile of BLOCK slots per program; one atomic per run of equal owners
        # within the tile (a run of L slots costs ~L / BLOCK + 1 atomics).
        pid = tl.program_id(0)
        local = tl.arange(0, BLOCK)
        offs = pid * BLOCK + local  # n < 2**31: int32 offsets are fine
        # Full tiles load without a mask, so the load is vectorized (LDG.128)
        # whatever n is; only the last tile pays for the mask. Masked slots read
        # as -1 (free, never counted).
        if (pid + 1) * BLOCK <= n:
            x = tl.load(owner_ptr + offs)
        else:
            x = tl.load(owner_ptr + offs, mask=offs < n, other=-1)
        # Neighbours from registers (tl.gather: a shared-memory exchange), not
        # from shifted global loads: DRAM and L2 see each slot once.
        x_prev = tl.gather(x, tl.maximum(local - 1, 0), 0)
        x_next = tl.gather(x, tl.minimum(local + 1, BLOCK - 1), 0)
        is_start = (local == 0) | (x != x_prev)
        is_end = (local == BLOCK - 1) | (x != x_next)
        # Start of the run containing each slot (inclusive max-scan of starts).
        run_start = tl.associative_scan(tl.where(is_start, local, 0), 0, _max_combine)
        run_len = local - run_start + 1
        counted = (x >= -2) & (x < num_agents) & (x != -1)  # invalid owners dropped
        bucket = tl.where(x == -2, num_agents, x)
        tl.atomic_add(
            out_ptr + bucket,
            run_len.to(out_ptr.dtype.element_ty),
            mask=is_end & counted,
            sem="relaxed",
        )

    @triton.jit
    def footprint_hist_kernel(
        owner_ptr,
        out_ptr,
        n,
        num_agents,
        nprog,
        BLOCK: tl.constexpr,
        NUM_BINS: tl.constexpr,
        TILES_PER_PROG: tl.constexpr,
    ):
        # Persistent: each program accumulates a local histogram over its tiles
        # (bin = owner + 2: 0 = shared, 1 = free (never counted), a + 2 = agent a)
        # and flushes the non-zero bins with atomics once at the end.
        # Tile t = pid + i * nprog (grid-stride). The trip count is a constexpr
        # (a power of two, so few variants get compiled) because Triton 3.6's
        # interpreter with NumPy 2 cannot run range() over runtime scalars
        # (they are 1-element arrays there); tiles past the end are skipped.
        pid = tl.program_id(0)
        local = tl.arange(0, BLOCK)
        hist = tl.zeros([NUM_BINS], dtype=tl.int32)
        for i in range(TILES_PER_PROG):
            t = pid + i * nprog
            offs = t * BLOCK + local
            if (t + 1) * BLOCK <= n:  # full tile: unmasked, vectorized load
                x = tl.load(owner_ptr + offs)
            else:  # last partial tile, or past the end (t >= num_tiles): all masked
                x = tl.load(owner_ptr + offs, mask=offs < n, other=-1)
            counted = (x >= -2) & (x < num_agents) & (x != -1)
            b = tl.where(counted, x + 2, 0).to(tl.int32)  # int64 maps: bins fit int32
            hist += tl.histogram(b, NUM_BINS, mask=counted)
        bins = tl.arange(0, NUM_BINS)
        bucket = tl.where(bins == 0, num_agents, bins - 2)
        keep = (hist != 0) & (bins != 1) & (bins < num_agents + 2)
        tl.atomic_add(
            out_ptr + bucket,
            hist.to(out_ptr.dtype.element_ty),
            mask=keep,
            sem="relaxed",
        )

    _KERNELS = (footprint_runs_kernel, footprint_hist_kernel)
    _KERNELS_INTERPRET = interpret
    return _KERNELS


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def choose_mode(num_agents: int) -> str:
    """``auto`` policy: per-program histogram for few agents, run-combining otherwise."""
    return "hist" if _next_pow2(num_agents + 2) <= HIST_MAX_BINS else "runs"


def _num_programs_hist(num_tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        cap = sms * HIST_PROGRAMS_PER_SM
    else:
        cap = _INTERPRETER_PROGRAMS
    return max(1, min(num_tiles, cap))


def agent_footprints_kernel(
    slot_owner: torch.Tensor,
    num_agents: int,
    out: Optional[torch.Tensor] = None,
    *,
    mode: str = "auto",
    accumulate: bool = False,
    validate: bool = False,
    block: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """Triton path. ``mode`` is ``auto`` | ``runs`` | ``hist``.

    Does not validate unless ``validate=True``; invalid owners are ignored.
    ``accumulate=True`` adds into ``out`` instead of zeroing it first.
    """
    _check_args(slot_owner, num_agents)
    dev = slot_owner.device
    if dev.type != "cuda" and not _interpret_enabled():
        raise RuntimeError(
            "the footprint Triton kernel needs a CUDA tensor, or TRITON_INTERPRET=1 "
            "(set before the first kernel call) to run on CPU tensors"
        )
    if validate:
        validate_slot_owner(slot_owner, num_agents)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out tensor")
        out = torch.zeros(num_agents + 1, dtype=torch.int32, device=dev)
    else:
        _check_out(out, num_agents, dev)
        if not accumulate:
            out.zero_()
    n = slot_owner.numel()
    if n == 0:
        return out
    if n >= 2**31 - 4096:
        raise ValueError(f"num_slots too large for int32 offsets: {n}")
    owner = slot_owner if slot_owner.is_contiguous() else slot_owner.contiguous()

    if mode == "auto":
        mode = choose_mode(num_agents)
    runs_kernel, hist_kernel = _build_kernels(_interpret_enabled())
    if mode == "runs":
        blk = block or RUNS_BLOCK
        grid = (triton_cdiv(n, blk),)
        runs_kernel[grid](owner, out, n, num_agents, BLOCK=blk, num_warps=num_warps or RUNS_NUM_WARPS)
    elif mode == "hist":
        bins = max(2, _next_pow2(num_agents + 2))
        if bins > _HIST_HARD_CAP:
            raise ValueError(
                f"hist mode supports num_agents + 2 <= {_HIST_HARD_CAP}, got num_agents={num_agents}; use mode='runs'"
            )
        blk = block or HIST_BLOCK
        num_tiles = triton_cdiv(n, blk)
        cap = _num_programs_hist(num_tiles, dev)
        tiles_per_prog = _next_pow2(triton_cdiv(num_tiles, cap))
        nprog = triton_cdiv(num_tiles, tiles_per_prog)
        hist_kernel[(nprog,)](
            owner,
            out,
            n,
            num_agents,
            nprog,
            BLOCK=blk,
            NUM_BINS=bins,
            TILES_PER_PROG=tiles_per_prog,
            num_warps=num_warps or HIST_NUM_WARPS,
        )
    else:
        raise ValueError(f"unknown mode {mode!r} (auto | runs | hist)")
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def agent_footprints(
    slot_owner: torch.Tensor,
    num_agents: int,
    out: Optional[torch.Tensor] = None,
    *,
    use_kernel: Optional[bool] = None,
    mode: str = "auto",
    accumulate: bool = False,
    validate: bool = False,
) -> torch.Tensor:
    """Per-agent slot counts, shape ``[num_agents + 1]`` (last = shared slots).

    CUDA tensor -> Triton kernel (no validation unless ``validate=True``; invalid
    owners ignored); CPU tensor -> torch reference (always validates).
    ``use_kernel=True`` forces the kernel (CPU needs ``TRITON_INTERPRET=1``),
    ``use_kernel=False`` forces the reference.
    """
    if use_kernel is None:
        use_kernel = isinstance(slot_owner, torch.Tensor) and slot_owner.is_cuda
    if use_kernel:
        return agent_footprints_kernel(
            slot_owner, num_agents, out, mode=mode, accumulate=accumulate, validate=validate
        )
    return agent_footprints_ref(slot_owner, num_agents, out, accumulate=accumulate)
