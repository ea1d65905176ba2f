"""A load generator for OpenAI-compatible servers (run by tools/bench-serve; see there).

N concurrent clients each send streamed /v1/completions requests one after another: a fixed
prompt of their own, greedy, exactly M tokens (ignore_eos). Reports aggregate output tokens/s,
time to first token and inter-token latency (p50, p99) and errors; in soak mode also samples the
server's RSS.

    python tools/bench_serve.py --url URL --clients N --tokens M (--requests K | --duration S)
        [--pid PID --rss-every S --warmup S] [--json]
"""

import argparse
import asyncio
import json
import sys
import time

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "List the planets of the solar system and one fact about each.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main differences between a violin and a viola?",
    "Give three tips for learning a new language as an adult.",
    "Summarise the history of the printing press in a paragraph.",
    "Why is the sky blue during the day and red at sunset?",
]


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def client_loop(http, url, i, tokens, stop_at, requests, stats):
    prompt = f"{PROMPTS[i % len(PROMPTS)]} (reader {i})"
    done = 0
    while (requests is None or done < requests) and (stop_at is None or time.time() < stop_at):
        body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "cache_prompt": False}
        sent = time.perf_counter()
        last = None
        got = 0
        try:
            async with http.stream("POST", url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    stats["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    await asyncio.sleep(0.5)
                    continue
                finished = None
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"])
                    for c in chunk.get("choices", []):
                        if c.get("text"):
                            now = time.perf_counter()
                            if last is None:
                                stats["ttft"].append(now - sent)
                            else:
                                stats["itl"].append(now - last)
                            last = now
                            got += 1
                        finished = c.get("finish_reason") or finished
                if finished != "length":
                    stats["errors"].append(f"finish_reason {finished!r} after {got} chunks")
        except Exception as e:  # noqa: BLE001
            stats["errors"].append(repr(e)[:200])
            continue
        stats["tokens"] += tokens
        stats["requests"] += 1
        done += 1


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--rss-every", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if (a.requests is None) == (a.duration is None):
        sys.exit("give exactly one of --requests and --duration")
    stats = {"ttft": [], "itl": [], "errors": [], "tokens": 0, "requests": 0}
    limits = httpx.Limits(max_connections=a.clients + 4, max_keepalive_connections=a.clients + 4)
    rss = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as http:
        start = time.time()
        stop_at = start + a.duration if a.duration else None

        async def sample_rss():
            while True:
                rss.append((time.time() - start, rss_kib(a.pid)))
                await asyncio.sleep(a.rss_every)

        sampler = asyncio.create_task(sample_rss()) if a.pid else None
        await asyncio.gather(*(client_loop(http, a.url, i, a.tokens, stop_at, a.requests, stats)
                               for i in range(a.clients)))
        wall = time.time() - start
        if sampler:
            sampler.cancel()
            rss.append((wall, rss_kib(a.pid)))
    out = {
        "clients": a.clients, "tokens_per_request": a.tokens, "requests": stats["requests"],
        "wall_s": wall, "aggregate_tps": stats["tokens"] / wall,
        "ttft_p50_ms": pct(stats["ttft"], 50) * 1e3, "ttft_p99_ms": pct(stats["ttft"], 99) * 1e3,
        "itl_p50_ms": pct(stats["itl"], 50) * 1e3, "itl_p99_ms": pct(stats["itl"], 99) * 1e3,
        "errors": len(stats["errors"]), "first_errors": stats["errors"][:5],
    }
    if rss:
        after = [kib for t, kib in rss if t >= a.warmup] or [rss[-1][1]]
        out["rss_mib_after_warmup"] = {"first": after[0] / 1024, "min": min(after) / 1024,
                                       "max": max(after) / 1024, "last": after[-1] / 1024}
        out["rss_drift_after_warmup"] = (max(after) - min(after)) / min(after)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


asyncio.run(main())
