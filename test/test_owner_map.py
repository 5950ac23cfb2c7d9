"""The device owner map's bookkeeping on CPU tensors (the same code runs on CUDA; there the read is
one control step late).  The end-to-end check against SGLang's radix cache is in
test_server_accounting.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_concur.owner_map import SlotOwnerMap


def req(agent, row, protected, allocated):
    return SimpleNamespace(routing_key=agent, kv=SimpleNamespace(req_pool_idx=row, cache_protected_len=protected,
                                                                  kv_allocated_len=allocated))


def test_marks_own_slots_shares_matched_ones_and_frees():
    rows = torch.zeros(4, 16, dtype=torch.int32)
    rows[0, :6] = torch.tensor([1, 2, 3, 4, 5, 6])  # A: 6 slots of its own
    rows[1, :8] = torch.tensor([1, 2, 3, 7, 8, 9, 10, 11])  # B: matched A's first 3, then 5 of its own
    m = SlotOwnerMap(32, torch.device("cpu"), rows)
    m.admitted([req("A", 0, 0, 6)])
    assert m.read() == ({"A": 6}, 0)
    m.admitted([req("B", 1, 3, 8), req(None, 2, 0, 0)])
    assert m.read() == ({"A": 3, "B": 5}, 3)
    m.admitted([req("A", 0, 6, 6)])  # A's own history matched by itself stays A's
    assert m.read() == ({"A": 3, "B": 5}, 3)
    m.checkpointed(req("B", 1, 8, 8), up_to=8)
    m.freed(torch.tensor([9, 10], dtype=torch.int64))  # evicted
    assert m.read() == ({"A": 3, "B": 3}, 3)


def test_decoded_slots_count_at_checkpoint_and_indices_are_recycled():
    rows = torch.zeros(2, 16, dtype=torch.int32)
    rows[0, :10] = torch.arange(1, 11)
    m = SlotOwnerMap(32, torch.device("cpu"), rows)
    m.admitted([req("A", 0, 0, 4)])
    m.checkpointed(req("A", 0, 0, 10), up_to=10)  # prompt 4 + 6 decoded
    assert m.read() == ({"A": 10}, 0)
    ia = m.agent_index("A")
    m.retain({"B"})  # A left the controller: its slots are no agent's, its index is reused
    assert m.read() == ({}, 0) and m.agent_index("C") == ia
    assert int((m.owner == ia).sum()) == 0
