"""The controller through the in-process sglang.Engine API (real Engine on CPU, one per module),
switched on by the environment only, as verl does (it builds ServerArgs itself and never passes
`concur_*` keywords): `routing_key=` (one id, or one per prompt of a batch), anonymous turns found
by their prompts, status and end, and their async forms.  Each test uses its own agents."""

from __future__ import annotations

import asyncio

import pytest

from sglang_concur import cpu

SP = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tiny_model):
    cpu.apply()
    import sglang

    env = {"SGLANG_CONCUR_ENABLE": "1", "SGLANG_CONCUR_POLICY": "static", "SGLANG_CONCUR_INITIAL_WINDOW": "1",
           "SGLANG_CONCUR_CONTROL_INTERVAL": "0.2", "SGLANG_CONCUR_IDLE_TIMEOUT": "600"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        eng = sglang.Engine(model_path=tiny_model, **cpu.ENGINE_KWARGS, max_total_tokens=4096)
    finally:
        mp.undo()  # the scheduler processes have started with it; later servers of the session do not see it
    yield eng
    eng.shutdown()


def agents(engine) -> dict:
    return engine.concur_status()["ranks"][0]["agents"]


def test_routing_key_is_the_agent_and_end_frees_it(engine):
    out = engine.generate(input_ids=[1, 2, 3, 4], sampling_params=SP, routing_key="e-a")
    assert out["meta_info"]["completion_tokens"] == 4
    st = engine.concur_status()["ranks"][0]
    assert st["window"] == 1 and st["agents"]["e-a"]["state"] == "active"
    assert st["config"]["concur_policy"] == "static"  # from the environment
    assert engine.concur_end_agent("e-a") is True and engine.concur_end_agent("e-a") is False
    assert "e-a" not in agents(engine)


def test_window_one_holds_second_agent_until_end(engine):
    async def main():
        await engine.async_generate(input_ids=[5, 6, 7], sampling_params=SP, routing_key="e-b")
        c = asyncio.create_task(engine.async_generate(input_ids=[9, 8, 7], sampling_params=SP, routing_key="e-c"))
        for _ in range(600):
            st = (await engine.async_concur_status())["ranks"][0]
            if st["held_requests"] == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("e-c was never held")
        assert st["agents"]["e-c"]["state"] == "waiting" and not c.done()
        assert await engine.async_concur_end_agent("e-b") is True
        out = await asyncio.wait_for(c, 60)
        assert out["meta_info"]["completion_tokens"] == 4
        assert (await engine.async_concur_status())["ranks"][0]["agents"]["e-c"]["state"] == "active"
        assert await engine.async_concur_end_agent("e-c") is True

    engine.loop.run_until_complete(main())


def test_a_batch_with_one_routing_key_per_prompt(engine):
    outs = engine.generate(input_ids=[[1, 1], [2, 2]], sampling_params=SP, routing_key=["e-d", "e-d"])
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [4, 4]
    assert agents(engine)["e-d"]["turns"] == 2
    with pytest.raises(ValueError, match="routing_key has 1 agent ids for a batch of 2 prompts"):
        engine.generate(input_ids=[[1, 1], [2, 2]], sampling_params=SP, routing_key=["e-d"])
    engine.concur_end_agent("e-d")


def test_anonymous_turns_are_one_agent_found_by_its_prompt(engine):
    before = set(agents(engine))
    hist = list(range(100, 160))
    for _ in range(3):
        out = engine.generate(input_ids=hist, sampling_params=SP)
        hist = hist + out["output_ids"] + [42, 43]
    found = {k: v for k, v in agents(engine).items() if k not in before}
    assert len(found) == 1 and next(iter(found.values()))["turns"] == 3
    assert next(iter(found.values()))["identified_by"] == "inferred"


def test_invalid_agent_id_refused(engine):
    with pytest.raises(ValueError, match="invalid agent id"):
        engine.generate(input_ids=[1, 2], sampling_params=SP, routing_key="white space")
    with pytest.raises(ValueError, match="invalid agent id"):
        engine.concur_end_agent("")
