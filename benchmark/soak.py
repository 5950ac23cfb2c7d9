"""Soak: thousands of short agents against one live CPU server with the controller on, with random
client aborts and disconnects, mixed client modes (routing key in the body, in the header, no id),
end calls for some agents only.  Every request must be answered or aborted by its own client; none
may be lost (left waiting), and the controller's state must stay bounded.  Loopback only; stops by
itself (a hard deadline).  Writes results.json and results.md under --out.

    python benchmark/soak.py --agents 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def soak(url: str, n_agents: int, concurrency: int, seed: int, deadline: float, pid_of) -> dict:
    import aiohttp
    import psutil

    rng = random.Random(seed)
    counts = {"requests": 0, "answered": 0, "aborted_by_client": 0, "refused": 0, "lost": 0, "ended": 0}
    errors: dict = {}
    samples = []
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:

        async def status() -> dict:
            async with http.get(url + "/concur/status", timeout=aiohttp.ClientTimeout(total=60)) as r:
                return (await r.json())["ranks"][0]

        async def one(i: int) -> None:
            arng = random.Random(rng.random())
            mode = arng.choice(["body", "header", "anonymous"])
            name = f"soak-{i}"
            hist = [arng.randrange(10, 500) for _ in range(arng.randrange(20, 60))]
            async with sem:
                for _ in range(arng.randrange(1, 5)):
                    if time.monotonic() > deadline:
                        return
                    body = {"input_ids": hist, "sampling_params": {"max_new_tokens": arng.randrange(1, 5),
                                                                  "temperature": 0, "ignore_eos": True}}
                    headers = None
                    if mode == "body":
                        body["routing_key"] = name
                    else:
                        body["rid"] = uuid.uuid4().hex
                        if mode == "header":
                            headers = {"X-SMG-Routing-Key": name}
                    abort = arng.random() < 0.08  # the client gives up early (a disconnect: SGLang aborts it)
                    stream = arng.random() < 0.2
                    if stream:
                        body["stream"] = True
                    counts["requests"] += 1
                    t = aiohttp.ClientTimeout(total=arng.uniform(0.05, 1.0) if abort else 600)
                    try:
                        async with http.post(url + "/generate", json=body, headers=headers, timeout=t) as r:
                            if r.status != 200:
                                counts["refused"] += 1
                                errors[f"HTTP {r.status}"] = errors.get(f"HTTP {r.status}", 0) + 1
                                return
                            if stream:
                                last = None
                                async for line in r.content:
                                    if line.startswith(b"data: {"):
                                        last = json.loads(line[6:])
                                out = last["output_ids"] if last else []
                            else:
                                out = (await r.json())["output_ids"]
                        counts["answered"] += 1
                        hist = hist + list(out) + [arng.randrange(10, 500) for _ in range(arng.randrange(1, 20))]
                    except asyncio.TimeoutError:
                        if abort:
                            counts["aborted_by_client"] += 1
                            return
                        counts["lost"] += 1
                        return
                    except aiohttp.ClientError as e:
                        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                        counts["lost"] += 1
                        return
                    await asyncio.sleep(arng.uniform(0.0, 0.3))  # the tool
                if mode == "body" and arng.random() < 0.5:
                    async with http.post(f"{url}/concur/agents/{name}/end") as r:
                        counts["ended"] += r.status == 200

        async def sampler() -> None:
            while True:
                await asyncio.sleep(5)
                try:
                    st = await status()
                    proc = psutil.Process(pid_of())
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                    samples.append({"t": round(time.monotonic() - t0, 1), "agents_tracked": len(st["agents"]),
                                    "held_requests": st["held_requests"], "memory": st["memory"],
                                    "server_rss_mb": round(rss / 2**20)})
                except Exception as e:  # noqa: BLE001 - a sample may fail under load; the run goes on
                    errors[f"sample: {type(e).__name__}"] = errors.get(f"sample: {type(e).__name__}", 0) + 1

        t0 = time.monotonic()
        task = asyncio.create_task(sampler())
        await asyncio.gather(*(one(i) for i in range(n_agents)))
        elapsed = time.monotonic() - t0
        # let the server forget idle agents (the idle timeout), then read what it still holds
        await asyncio.sleep(0)
        settle_deadline = time.monotonic() + 120
        final = await status()
        while final["agents"] and time.monotonic() < settle_deadline:
            await asyncio.sleep(2)
            final = await status()
        task.cancel()
    return {"counts": counts, "errors": errors, "elapsed_s": round(elapsed, 1), "samples": samples,
            "final": {"agents_tracked": len(final["agents"]), "held_requests": final["held_requests"],
                      "memory": final["memory"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=48, help="agents in flight at once (client side)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900, help="hard deadline: no new turn after it")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results", "soak"))
    a = ap.parse_args()
    if a.agents < 1 or a.concurrency < 1 or a.max_seconds <= 0:
        raise SystemExit("soak: error: need --agents >= 1, --concurrency >= 1, --max-seconds > 0")
    from sglang_concur.bench.server import cpu_server
    from sglang_concur.tiny_model import main as make_models

    models = os.path.join(ROOT, "models")
    if not os.path.exists(os.path.join(models, "tiny", "config.json")):
        make_models([models])
    flags = ["--concur-enable", "--concur-idle-timeout", "5", "--concur-control-interval", "0.5",
             "--max-queued-requests", "256"]
    os.makedirs(a.out, exist_ok=True)
    with cpu_server(os.path.join(models, "tiny"), flags, max_total_tokens=4096,
                    log_path=os.path.join("/tmp", "concur-soak-server.log")) as srv:
        res = asyncio.run(soak(srv.url, a.agents, a.concurrency, a.seed, time.monotonic() + a.max_seconds,
                               lambda: srv.proc.pid))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    res["meta"] = {"command": "python benchmark/soak.py " + " ".join(sys.argv[1:]), "commit": commit,
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "agents": a.agents,
                   "concurrency": a.concurrency, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    c = res["counts"]
    rss = [s["server_rss_mb"] for s in res["samples"]]
    tracked = [s["agents_tracked"] for s in res["samples"]]
    md = [f"Soak: `{res['meta']['command']}`, commit {commit}, {res['meta']['machine']}, {res['meta']['date']}.", "",
          "| agents | requests | answered | aborted by their client | refused (HTTP) | lost | ended by call | seconds |",
          "|---|---|---|---|---|---|---|---|",
          f"| {a.agents} | {c['requests']} | {c['answered']} | {c['aborted_by_client']} | {c['refused']} | {c['lost']} | "
          f"{c['ended']} | {res['elapsed_s']} |", "",
          f"- errors by kind: {res['errors'] or 'none'}",
          f"- agents tracked by the controller during the run: max {max(tracked, default=0)}; after the idle "
          f"timeout: {res['final']['agents_tracked']} (held requests {res['final']['held_requests']})",
          f"- controller state after the run: {res['final']['memory']}",
          f"- server resident memory (all processes), MB: first {rss[0] if rss else '-'}, max {max(rss, default='-')}, "
          f"last {rss[-1] if rss else '-'}"]
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    ok = (c["lost"] == 0 and c["answered"] + c["aborted_by_client"] + c["refused"] == c["requests"]
          and res["final"]["held_requests"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
