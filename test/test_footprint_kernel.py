"""Per-agent KV footprint kernel vs. torch reference vs. a plain-Python oracle.

The Triton kernels run on CPU tensors through Triton's interpreter
(TRITON_INTERPRET=1, set below before triton is imported). The interpreter is
slow (~0.1-0.2 s per 2048-slot tile for the run-combining kernel), so sizes
stay modest (<= ~50k slots).

Interpreter notes (Triton 3.6 + NumPy 2): scalars are 1-element arrays there,
so ``range()`` over runtime scalars and ``tl.num_programs`` break; the kernels
use a constexpr trip count and an explicit grid-size argument instead.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere below

from collections import Counter  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from sglang_concur_kernels import footprint as fp  # noqa: E402
from sglang_concur_kernels.footprint import (  # noqa: E402
    SHARED,
    agent_footprints,
    agent_footprints_kernel,
    agent_footprints_ref,
    validate_slot_owner,
)

RB = fp.RUNS_BLOCK
HB = fp.HIST_BLOCK
MODES = ["runs", "hist"]


def oracle(owner, num_agents):
    """Independent plain-Python count: agents 0..A-1, then shared; free ignored."""
    c = Counter(owner.tolist())
    return [c.get(a, 0) for a in range(num_agents)] + [c.get(SHARED, 0)]


def gen_random(n, num_agents, seed, p_free=0.2, p_shared=0.1):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    if num_agents > 0:
        x = torch.randint(0, num_agents, (n,), generator=g, dtype=torch.int32)
    else:
        x = torch.full((n,), -1, dtype=torch.int32)
    x[u < p_free + p_shared] = -1
    x[u < p_shared] = SHARED
    return x


def gen_runs(n, num_agents, seed, mean_run=256):
    """Contiguous runs (allocation-like), random lengths around mean_run."""
    g = torch.Generator().manual_seed(seed)
    n_runs = n // max(1, mean_run // 2) + 2
    lens = torch.randint(1, 2 * mean_run, (n_runs,), generator=g)
    owners = gen_random(n_runs, num_agents, seed + 1)
    x = torch.repeat_interleave(owners, lens)[:n]
    if x.numel() < n:
        x = torch.cat([x, torch.full((n - x.numel(),), -1, dtype=torch.int32)])
    return x.contiguous()


def check(owner, num_agents, mode):
    want = oracle(owner, num_agents)
    ref = agent_footprints_ref(owner, num_agents)
    assert ref.dtype == torch.int32 and ref.shape == (num_agents + 1,)
    assert ref.tolist() == want
    got = agent_footprints_kernel(owner, num_agents, mode=mode)
    assert got.dtype == torch.int32 and got.shape == (num_agents + 1,)
    assert got.tolist() == want, f"mode={mode} n={owner.numel()} A={num_agents}"
    return got


@pytest.fixture(autouse=True, scope="module")
def _interpreted():
    yield
    # the kernels must have been built for the interpreter in this process
    assert fp._KERNELS is None or fp._KERNELS_INTERPRET is True


# --------------------------------------------------------------------------
# hand-made values (would catch e.g. an off-by-one in the shared bucket)


@pytest.mark.parametrize("mode", MODES)
def test_hand_example(mode):
    owner = torch.tensor([0, 0, -2, -1, 1, -2, 2, 2, 2, -1, -2], dtype=torch.int32)
    expect = [2, 1, 3, 3]  # agent0, agent1, agent2, shared
    assert agent_footprints_ref(owner, 3).tolist() == expect
    assert agent_footprints_kernel(owner, 3, mode=mode).tolist() == expect
    # the same map read with one more agent: the extra agent is 0, shared stays last
    assert agent_footprints_kernel(owner, 4, mode=mode).tolist() == [2, 1, 3, 0, 3]


# --------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("mode", MODES)
def test_no_agents(mode):
    owner = gen_random(3001, 0, seed=1, p_free=0.5, p_shared=0.5)
    got = check(owner, 0, mode)
    assert got.shape == (1,) and got.item() == int((owner == SHARED).sum())


@pytest.mark.parametrize("mode", MODES)
def test_one_agent_owns_everything(mode):
    n = 3 * max(RB, HB) + 5
    got = check(torch.zeros(n, dtype=torch.int32), 1, mode)
    assert got.tolist() == [n, 0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fill", [-1, SHARED])
def test_all_free_or_all_shared(mode, fill):
    n = RB + 17
    got = check(torch.full((n,), fill, dtype=torch.int32), 5, mode)
    assert got.tolist() == [0] * 5 + [n if fill == SHARED else 0]


@pytest.mark.parametrize("mode", MODES)
def test_empty(mode):
    got = agent_footprints_kernel(torch.empty(0, dtype=torch.int32), 4, mode=mode)
    assert got.tolist() == [0] * 5
    assert agent_footprints_ref(torch.empty(0, dtype=torch.int32), 4).tolist() == [0] * 5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["random", "runs"])
@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 6921])
def test_sizes_not_multiple_of_block(mode, kind, n):
    assert RB == 2048 and HB == 2048, "sizes below assume BLOCK=2048"
    gen = gen_random if kind == "random" else gen_runs
    check(gen(n, 37, seed=n), 37, mode)


@pytest.mark.parametrize("n", [1, 5000])
def test_many_agents_few_slots(n):
    owner = gen_random(n, 10_000, seed=7)
    check(owner, 10_000, "runs")
    check(owner, 10_000, "auto")  # auto -> runs for 10k agents
    with pytest.raises(ValueError, match="hist mode"):
        agent_footprints_kernel(owner, 10_000, mode="hist")


@pytest.mark.parametrize("mode", MODES)
def test_runs_across_tile_boundaries(mode):
    blk = RB
    # one run straddling the first boundary, one exactly covering tile 1,
    # shared run straddling the next boundary, single-slot runs, a long run of
    # agent 0 spanning two whole tiles, alternating owners
    parts = [
        torch.full((blk - 10,), 3, dtype=torch.int32),
        torch.full((20,), 1, dtype=torch.int32),  # crosses 1st boundary
        torch.full((blk - 10,), 2, dtype=torch.int32),  # ends exactly at 2nd boundary
        torch.full((blk,), 4, dtype=torch.int32),  # exactly tile 2
        torch.full((5,), SHARED, dtype=torch.int32),
        torch.tensor([0, 1, 0, 1, -1, SHARED, 0], dtype=torch.int32),
        torch.full((2 * blk + 3,), 0, dtype=torch.int32),
        torch.arange(300, dtype=torch.int32) % 5,
    ]
    owner = torch.cat(parts)
    check(owner, 5, mode)


def test_runs_heavy_large():
    # ~50k slots, runs of ~256, 1k agents (the run-combining path)
    owner = gen_runs(50_001, 1000, seed=3, mean_run=256)
    check(owner, 1000, "runs")


@pytest.mark.parametrize("num_agents", [0, 1, 100, 126])
def test_hist_random_large(num_agents):
    # random owners (no runs), the per-program histogram path; fast in the interpreter
    owner = gen_random(50_003, num_agents, seed=num_agents)
    check(owner, num_agents, "hist")


def test_auto_mode_choice():
    assert fp.choose_mode(0) == "hist"
    assert fp.choose_mode(fp.HIST_MAX_BINS - 2) == "hist"
    assert fp.choose_mode(fp.HIST_MAX_BINS - 1) == "runs"
    assert fp.choose_mode(10_000) == "runs"


# --------------------------------------------------------------------------
# API: out=, accumulate, dtypes, layouts, dispatch


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_dtype", [torch.int32, torch.int64])
def test_out_and_accumulate(mode, out_dtype):
    owner = gen_runs(5000, 9, seed=11, mean_run=64)
    want = torch.tensor(oracle(owner, 9), dtype=out_dtype)
    out = torch.full((10,), 12345, dtype=out_dtype)  # garbage must be zeroed
    res = agent_footprints_kernel(owner, 9, out, mode=mode)
    assert res is out and torch.equal(out, want)
    agent_footprints_kernel(owner, 9, out, mode=mode, accumulate=True)
    assert torch.equal(out, 2 * want)
    ref_out = torch.full((10,), 7, dtype=out_dtype)
    agent_footprints_ref(owner, 9, ref_out)
    assert torch.equal(ref_out, want)
    agent_footprints_ref(owner, 9, ref_out, accumulate=True)
    assert torch.equal(ref_out, 2 * want)


def test_out_validation():
    owner = torch.zeros(10, dtype=torch.int32)
    with pytest.raises(ValueError, match="shape"):
        agent_footprints_kernel(owner, 3, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError):
        agent_footprints_kernel(owner, 3, torch.zeros(4, dtype=torch.float32))
    with pytest.raises(ValueError, match="accumulate"):
        agent_footprints_kernel(owner, 3, accumulate=True)
    with pytest.raises(TypeError):
        agent_footprints_ref(owner.to(torch.float32), 3)
    with pytest.raises(ValueError):
        agent_footprints_ref(owner, -1)


@pytest.mark.parametrize("mode", MODES)
def test_int64_and_non_contiguous(mode):
    base = gen_runs(2 * 3000, 13, seed=5, mean_run=32)
    strided = base[::2]
    assert not strided.is_contiguous()
    check(strided, 13, mode)
    check(base.to(torch.int64), 13, mode)


def test_dispatch_cpu_uses_reference_and_forced_kernel():
    owner = gen_random(4000, 20, seed=9)
    want = oracle(owner, 20)
    assert agent_footprints(owner, 20).tolist() == want  # CPU -> reference
    assert agent_footprints(owner, 20, use_kernel=True).tolist() == want
    bad = owner.clone()
    bad[123] = 20
    with pytest.raises(ValueError):  # the CPU path validates
        agent_footprints(bad, 20)


# --------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("bad_value", [-3, 4, 1000, -(2**31)])
def test_reference_rejects_out_of_range(bad_value):
    owner = torch.tensor([0, 1, -1, -2, 3, 2], dtype=torch.int32)
    owner[4] = bad_value
    with pytest.raises(ValueError, match=rf"slot_owner\[4\] = {bad_value}\b.*\[-2, 4\)"):
        agent_footprints_ref(owner, 4)
    with pytest.raises(ValueError, match=str(bad_value)):
        validate_slot_owner(owner, 4)


def test_reference_accepts_boundaries():
    owner = torch.tensor([-2, -1, 0, 3], dtype=torch.int32)
    assert agent_footprints_ref(owner, 4).tolist() == [1, 0, 0, 1, 1]


@pytest.mark.parametrize("mode", MODES)
def test_kernel_ignores_invalid_unless_validate(mode):
    owner = gen_runs(3000, 6, seed=21, mean_run=50)
    valid_counts = oracle(owner, 6)
    bad = owner.clone()
    bad[100:140] = 6  # == num_agents: out of range
    bad[2500] = -7
    got = agent_footprints_kernel(bad, 6, mode=mode)
    # invalid slots are dropped; everything else is counted as usual
    expect = oracle(torch.where((bad >= -2) & (bad < 6), bad, torch.full_like(bad, -1)), 6)
    assert got.tolist() == expect
    assert expect != valid_counts  # the overwrite did change the map
    with pytest.raises(ValueError, match="= 6"):
        agent_footprints_kernel(bad, 6, mode=mode, validate=True)
