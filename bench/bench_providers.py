"""Time the proxy adds for each provider type, paired with direct calls in one run; routing and failover costs.

One fake upstream (its own process) speaks both Anthropic Messages and OpenAI chat completions, streaming an
answer of N content chunks, one network write each (N = the request's max_tokens). One anthropic-proxy (mitmdump
-s addons/proxy.py) in anthropic mode routes by the header `x-bench-target`:
  passthrough   the built-in anthropic provider (byte-faithful, the client's key)
  anthropic-3p  an anthropic-type provider with its own key (body as it is, headers rebuilt)
  openai        an openai-type provider (translated both ways, as openrouter mode is)
Two more proxies get only passthrough calls, one with ten more routes that never match: the routing's own cost.
Each round calls every path directly and through the proxy, in random order; "added" is the proxy's time to the stream's
last byte minus the direct call's, per percentile. Per-chunk cost: (added for the long answer - added for the short
one) / the chunks between them. Failover: a provider that answers 529 with the anthropic-3p target as fallback;
the fallback attempt's time (from the 529 to the fallback's first byte) is read from the records.

    .venv/bin/python bench/bench_providers.py [--rounds 300] [--short 4] [--long 61]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import BIN, ROOT, free_port, percentile, start

KEY = "bench-3p-key-0000000000000000"
CLIENT_KEY = "sk-ant-api03-bench0000000000000000000000000000000000"


# --- the fake upstream (its own process) ---------------------------------------------------------------------
def serve(port: int) -> None:
    from aiohttp import web

    def sse(event: str, data: dict) -> bytes:
        return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

    def anthropic_events(n: int) -> list[bytes]:
        start_message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "m", "content": [],
                         "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}
        return [sse("message_start", {"type": "message_start", "message": start_message}),
                sse("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
                *[sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": f"word{i} "}}) for i in range(n)],
                sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": {"output_tokens": n}}),
                sse("message_stop", {"type": "message_stop"})]

    def openai_events(n: int) -> list[bytes]:
        def chunk(delta: dict | None, finish: str | None = None, **extra: object) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                           "choices": choices, **extra}).encode() + b"\n\n"
        return [chunk({"role": "assistant", "content": ""}), *[chunk({"content": f"word{i} "}) for i in range(n)],
                chunk({}, "stop"), chunk(None, usage={"prompt_tokens": 9, "completion_tokens": n}), b"data: [DONE]\n\n"]

    async def stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in events:  # one write per event, as a model streams
            await response.write(event)
        await response.write_eof()
        return response

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await stream(request, anthropic_events(int(body.get("max_tokens") or 4)))

    async def overloaded(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                                 status=529)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await stream(request, openai_events(int(body.get("max_tokens") or 4)))

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/fail/v1/messages", overloaded)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- measurement ---------------------------------------------------------------------------------------------
def config(upstream: str, decoys: int) -> dict:
    providers = {"thirdparty": {"type": "anthropic", "baseUrl": upstream, "apiKeyEnv": "BENCH_3P_KEY"},
                 "oai": {"type": "openai", "baseUrl": f"{upstream}/v1"},
                 "failing": {"type": "anthropic", "baseUrl": f"{upstream}/fail"}}
    routes = [{"when": {"model": f"never-{i}-*", "header": {"name": "x-never", "value": "x"}}, "provider": "oai"}
              for i in range(decoys)]
    routes += [{"when": {"header": {"name": "x-bench-target", "value": "anthropic-3p"}}, "provider": "thirdparty"},
               {"when": {"header": {"name": "x-bench-target", "value": "openai"}}, "provider": "oai",
                "model": "bench-model"},
               {"when": {"header": {"name": "x-bench-target", "value": "failover"}}, "provider": "failing"}]
    return {"providers": providers, "routes": routes, "fallbacks": {"failing": ["thirdparty"]}}


def timed_stream(client: httpx.Client, path: str, body: dict, headers: dict) -> float:
    t0 = time.perf_counter()
    with client.stream("POST", path, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.read()[:300]!r}")
        for _ in response.iter_raw():
            pass
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--short", type=int, default=4, help="content chunks of the short answer (default 4)")
    parser.add_argument("--long", type=int, default=61, help="content chunks of the long answer (default 61)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    tmp = Path(tempfile.mkdtemp(prefix="anthropic-proxy-bench-providers-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENROUTER_"))}
    env.update(HOME=str(tmp), BENCH_3P_KEY=KEY)
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    # The routing comparison is between two proxies that get the same calls (a proxy that serves more calls is
    # faster per call: warmer caches, fewer wake-ups), differing only in ten routes that never match.
    proxies = {"proxy": free_port(), "proxy+0 routes": free_port(), "proxy+10 routes": free_port()}
    procs = [start([sys.executable, __file__, "--serve", str(upstream_port)], env)]
    for index, (name, port) in enumerate(proxies.items()):
        state = tmp / f"state{index}"
        state.mkdir()
        (state / "config.json").write_text(json.dumps(config(upstream, 10 if "routes" in name else 0)))
        procs.append(start([str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "proxy.py"), "-p", str(port),
                            "--set", f"state_dir={state}", "--set", f"anthropic_upstream={upstream}",
                            "--set", f"confdir={tmp}/c{index}", "--set", "termlog_verbosity=error",
                            "--set", "flow_detail=0"], env))
    try:
        direct = httpx.Client(base_url=upstream, timeout=30)
        through = {name: httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
                   for name, port in proxies.items()}
        deadline = time.monotonic() + 30
        while True:
            try:
                if all(c.get("/health").status_code == 200 for c in through.values()):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the proxies did not come up")
            time.sleep(0.2)
        results = run(direct, through, args, rounds=20)  # warm-up
        results = run(direct, through, args, rounds=args.rounds)
        time.sleep(2)
        failover = [r for r in through["proxy"].get("/api/monitor/requests", params={"limit": 1000}).json()["data"]
                    if len(r.get("attempts") or []) == 2]
        report(results, failover, args)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)


def run(direct: httpx.Client, through: dict[str, httpx.Client], args: argparse.Namespace, rounds: int) -> dict:
    anthropic_headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    cases = []
    for n in (args.short, args.long):
        messages = {"model": "claude-sonnet-4-5", "max_tokens": n, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}
        chat = {"model": "bench-model", "max_tokens": n, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}]}
        cases += [
            (("passthrough", n, "direct"), direct, "/v1/messages", messages, anthropic_headers),
            (("passthrough", n, "proxy"), through["proxy"], "/v1/messages", messages, anthropic_headers),
            (("passthrough", n, "proxy+0 routes"), through["proxy+0 routes"], "/v1/messages", messages,
             anthropic_headers),
            (("passthrough", n, "proxy+10 routes"), through["proxy+10 routes"], "/v1/messages", messages,
             anthropic_headers),
            (("anthropic-3p", n, "direct"), direct, "/v1/messages", messages, {"x-api-key": KEY}),
            (("anthropic-3p", n, "proxy"), through["proxy"], "/v1/messages", messages,
             {**anthropic_headers, "x-bench-target": "anthropic-3p"}),
            (("openai", n, "direct"), direct, "/v1/chat/completions", chat, {}),
            (("openai", n, "proxy"), through["proxy"], "/v1/messages", messages,
             {**anthropic_headers, "x-bench-target": "openai"}),
        ]
    cases.append((("failover", args.short, "proxy"), through["proxy"], "/v1/messages",
                  {**cases[0][3], "max_tokens": args.short}, {**anthropic_headers, "x-bench-target": "failover"}))
    results: dict[tuple, list[float]] = {case[0]: [] for case in cases}
    for _ in range(rounds):
        random.shuffle(cases)
        for key, client, path, body, headers in cases:
            results[key].append(timed_stream(client, path, body, headers))
    return results


def report(results: dict, failover: list[dict], args: argparse.Namespace) -> None:
    def added(path: str, n: int, p: float, via: str = "proxy") -> float:
        return percentile(results[(path, n, via)], p) - percentile(results[(path, n, "direct")], p)

    print(f"{args.rounds} rounds, every case once per round in random order; streamed answers of {args.short} and "
          f"{args.long} content chunks (one write each); Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"| path | direct p50, {args.short} chunks | added p50 / p90 / p99, {args.short} chunks | "
          f"added p50, {args.long} chunks | per extra chunk |")
    print("|---|---|---|---|---|")
    for path in ("passthrough", "anthropic-3p", "openai"):
        per_chunk = (added(path, args.long, 50) - added(path, args.short, 50)) / (args.long - args.short)
        print(f"| {path} | {percentile(results[(path, args.short, 'direct')], 50):.2f} ms | "
              f"{added(path, args.short, 50):.2f} / {added(path, args.short, 90):.2f} / "
              f"{added(path, args.short, 99):.2f} ms | {added(path, args.long, 50):.2f} ms | "
              f"{per_chunk * 1000:.0f} µs |")
    for n in (args.short, args.long):
        routed = percentile(results[("passthrough", n, "proxy+10 routes")], 50)
        plain = percentile(results[("passthrough", n, "proxy+0 routes")], 50)
        print(f"| passthrough with 10 routes that do not match, {n} chunks: p50 {routed:.2f} ms vs {plain:.2f} ms "
              f"without routes ({routed - plain:+.2f} ms) | | | | |")
    if failover:
        fallback_ms = sorted(r["attempts"][1]["durationMs"] for r in failover)
        first_ms = sorted(r["attempts"][0]["durationMs"] for r in failover)
        total = results[("failover", args.short, "proxy")]
        print(f"| failover (529, then the anthropic-3p target): the 529 after p50 {percentile(first_ms, 50):.2f} ms; "
              f"from the 529 to the fallback's first byte p50 {percentile(fallback_ms, 50):.2f} ms, "
              f"p99 {percentile(fallback_ms, 99):.2f} ms; whole call p50 {percentile(total, 50):.2f} ms "
              f"({len(failover)} records) | | | | |")


if __name__ == "__main__":
    main()
