"""--concur-enable through the in-process sglang.Engine API (real Engine on CPU, one per module)."""

from __future__ import annotations

import asyncio

import pytest

from sglang_concur import cpu

SP = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tiny_model):
    cpu.apply()
    import sglang

    eng = sglang.Engine(model_path=tiny_model, **cpu.ENGINE_KWARGS, max_total_tokens=4096,
                        concur_enable=True, concur_policy="static", concur_initial_window=1,
                        concur_control_interval=0.2)
    yield eng
    eng.shutdown()


def test_routing_key_is_the_agent(engine):
    out = engine.generate(input_ids=[1, 2, 3, 4], sampling_params=SP, routing_key="e-a")
    assert out["meta_info"]["completion_tokens"] == 4
    st = engine.concur_status()["ranks"][0]
    assert st["window"] == 1 and st["agents"]["e-a"]["state"] == "active"
    assert st["config"]["concur_policy"] == "static"


def test_window_one_holds_second_agent_until_end(engine):
    async def main():
        b = asyncio.create_task(engine.async_generate(input_ids=[9, 8, 7], sampling_params=SP, routing_key="e-b"))
        for _ in range(400):
            st = (await engine.async_concur_status())["ranks"][0]
            if st["held_requests"] == 1:
                break
            await asyncio.sleep(0.05)
        assert st["held_requests"] == 1 and st["agents"]["e-b"]["state"] == "waiting" and not b.done()
        assert await engine.async_concur_end_agent("e-a") is True
        out = await asyncio.wait_for(b, 60)
        assert out["meta_info"]["completion_tokens"] == 4
        st = (await engine.async_concur_status())["ranks"][0]
        assert set(st["agents"]) == {"e-b"}

    engine.loop.run_until_complete(main())
    assert engine.concur_end_agent("e-b") is True and engine.concur_end_agent("e-b") is False


def test_invalid_agent_id_refused(engine):
    with pytest.raises(ValueError, match="invalid agent id"):
        engine.generate(input_ids=[1, 2], sampling_params=SP, routing_key="white space")
    with pytest.raises(ValueError, match="invalid agent id"):
        engine.concur_end_agent("")
    assert engine.generate(input_ids=[1, 2], sampling_params=SP)["meta_info"]["completion_tokens"] == 4
