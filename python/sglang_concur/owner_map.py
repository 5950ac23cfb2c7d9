"""Per-agent KV footprints measured on the device: a slot-to-agent owner map beside SGLang's KV pool.

`slot_owner[slot]` (int32, on the KV pool's device) is the agent index that computed the slot, -1
(FREE) for free slots or slots of requests without an agent, -2 (SHARED) for slots that more than
one agent uses (a shared prefix: counted once).  It is kept with device-side scatters only (no host
synchronisation), at three points named after the hooks that call them:

- `admitted(reqs)`: a prefill batch was formed; each request's own new slots (its kv row past the
  matched prefix) become its agent's, and matched slots of another agent become SHARED;
- `checkpointed(req, up_to)`: the request's KV goes into the radix tree (end of turn, or a chunk):
  its decoded slots become its agent's too;
- `freed(indices)`: the allocator freed slots (request end, radix eviction): FREE.

`read()` runs the footprint kernel (`sglang_concur_kernels.footprint`: Triton on CUDA, the torch
reference on CPU) once per control step.  On CUDA the result is copied to pinned host memory
without blocking and consumed at the next control step (one interval old): that step waits on the
copy's event (long done by then), so every TP rank uses the same counts at the same step; on CPU
it is immediate.
Agent indices are recycled when an agent leaves the controller (its slots become FREE).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch

from sglang_concur_kernels.footprint import FREE, SHARED, agent_footprints

logger = logging.getLogger("sglang_concur")


class SlotOwnerMap:
    def __init__(self, num_slots: int, device: torch.device, req_to_token: torch.Tensor) -> None:
        self.device = torch.device(device)
        self.owner = torch.full((num_slots,), FREE, dtype=torch.int32, device=self.device)
        self.req_to_token = req_to_token  # SGLang's [rows, max_context] slot table
        self.index: Dict[str, int] = {}
        self._free_idx: List[int] = []
        self._counts: Optional[torch.Tensor] = None
        self._host: Optional[torch.Tensor] = None
        self._event: Optional[Any] = None
        self._pending: Optional[Tuple[Dict[str, int], torch.Tensor]] = None

    @classmethod
    def for_scheduler(cls, scheduler: Any) -> Optional["SlotOwnerMap"]:
        """Attach to the scheduler's KV pool; None (with a log line) where the pool is not a plain
        token pool (hybrid SWA/mamba pools keep several slot spaces)."""
        alloc = getattr(scheduler, "token_to_kv_pool_allocator", None)
        rtp = getattr(scheduler, "req_to_token_pool", None)
        size = getattr(alloc, "size", None)
        if alloc is None or rtp is None or not isinstance(size, int) or not hasattr(rtp, "req_to_token"):
            logger.info("concur footprints off, reason=no plain token KV pool")
            return None
        m = cls(size + 2 * max(1, getattr(alloc, "page_size", 1)), alloc.device, rtp.req_to_token)
        orig_free, orig_clear = alloc.free, alloc.clear

        def free(free_index):
            m.freed(free_index)
            return orig_free(free_index)

        def clear():
            m.owner.fill_(FREE)
            return orig_clear()

        alloc.free, alloc.clear = free, clear
        return m

    # --- agent indices ------------------------------------------------------------------
    def agent_index(self, agent: str) -> int:
        i = self.index.get(agent)
        if i is None:
            i = self._free_idx.pop() if self._free_idx else len(self.index)
            self.index[agent] = i
        return i

    def retain(self, agents: Set[str]) -> None:
        """Recycle the indices of agents the controller no longer knows; their slots become FREE."""
        for aid in [a for a in self.index if a not in agents]:
            i = self.index.pop(aid)
            self.owner.masked_fill_(self.owner == i, FREE)
            self._free_idx.append(i)

    # --- owner map upkeep (device scatters, no host sync) -------------------------------
    def admitted(self, reqs: Iterable[Any]) -> None:
        for r in reqs:
            if r.routing_key is not None and r.kv.req_pool_idx is not None:
                self._mark(r, r.kv.cache_protected_len, r.kv.kv_allocated_len)

    def checkpointed(self, req: Any, up_to: int) -> None:
        if req.routing_key is not None and req.kv.req_pool_idx is not None:
            self._mark(req, req.kv.cache_protected_len, up_to)

    def freed(self, indices: torch.Tensor) -> None:
        if indices.numel():
            self.owner[indices.to(self.device, torch.int64)] = FREE

    def _mark(self, req: Any, own_from: int, own_to: int) -> None:
        i = self.agent_index(req.routing_key)
        row = self.req_to_token[req.kv.req_pool_idx]
        if own_to > own_from:
            self.owner[row[own_from:own_to].to(torch.int64)] = i
        if own_from > 0:  # tree-owned prefix: another agent's slots become shared
            idx = row[:own_from].to(torch.int64)
            o = self.owner[idx]
            self.owner[idx] = torch.where((o == i) | (o == FREE), o, torch.full_like(o, SHARED))

    # --- read ---------------------------------------------------------------------------
    def read(self) -> Optional[Tuple[Dict[str, int], int]]:
        """(tokens per agent, shared tokens): on CPU now, on CUDA from the previous call (None the
        first time).  Never depends on how far a copy got: decisions read it on every TP rank."""
        n = len(self.index) and max(self.index.values()) + 1
        if self._counts is None or self._counts.numel() < n + 1:
            size = max(64, 2 * (n + 1))
            self._counts = torch.zeros(size, dtype=torch.int32, device=self.device)
            self._host = torch.zeros(size, dtype=torch.int32, pin_memory=self.device.type == "cuda")
        counts = agent_footprints(self.owner, n, out=self._counts[: n + 1])
        if self.device.type != "cuda":
            return self._decode(dict(self.index), counts)
        done = None
        if self._pending is not None:
            self._event.synchronize()  # launched a control interval ago: no stall in practice
            done = self._decode(*self._pending)
        host = self._host[: n + 1]  # launch the next copy; it is consumed at the next control step
        host.copy_(counts, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
        self._pending = (dict(self.index), host)
        return done

    @staticmethod
    def _decode(index: Dict[str, int], counts: torch.Tensor) -> Tuple[Dict[str, int], int]:
        c = counts.tolist()
        return {a: c[i] for a, i in index.items() if c[i]}, c[-1]
