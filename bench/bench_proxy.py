"""Cost of anthropic-proxy over bare mitmproxy, measured side by side in one run.

Three proxies in reverse mode in front of one fake upstream (a separate process):
  bare        plain mitmdump (the JSON baseline)
  bare+stream mitmdump plus a three-line addon that only turns streaming on (the SSE baseline: bare
              mitmdump would buffer a whole event stream)
  addon       mitmdump -s addons/proxy.py (recording to SQLite; web app on the same port)
Requests alternate between the proxies (interleaved, random order each round), so drift in the
machine's load hits all of them alike. Prints a table; ratios are addon / baseline.

Then the bulk run, alone: a fourth proxy with the addon, pinned to one core with its writer (`taskset`), takes
4,000 non-streamed calls with unique 50 KB bodies at concurrency 10; the table gets the peak RSS of that proxy and
its writer together (sampled every 20 ms), its calls per second and the time until its store held them all.

    .venv/bin/python bench/bench_proxy.py [--rounds 300] [--streams 250] [--slices 11] [--bulk 4000] [--bulk-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SSE_EVENTS = 100
# A request Claude Code sent (system prompt, tools, a thinking round trip; keys masked): what a real call carries.
CLAUDE_CODE_REQUEST = ROOT / "tests" / "data" / "claude_code" / "claude_code_request_03_haiku_thinking_roundtrip.json"
STREAM_ADDON = "def responseheaders(flow):\n    flow.response.stream = True\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the fake upstream (runs in its own process) -------------------------------------------------

def serve(port: int) -> None:
    from aiohttp import web

    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "text", "text": "Hello! " * 20}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 40}}
    events = [("message_start", {"type": "message_start", "message": {**message, "content": [],
                                                                      "stop_reason": None}})]
    events.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}))
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": f"word{i} "}})
               for i in range(SSE_EVENTS - 5)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 95}}),
               ("message_stop", {"type": "message_stop"})]
    sse = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(sse), 10):  # ten events per write, like a fast model
            await response.write(b"".join(sse[i:i + 10]))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- measurement ---------------------------------------------------------------------------------

def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(url + "/v1/messages", json={"model": "m"}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure_latency(targets: dict[str, str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per target: JSON round-trip times (a tiny body, and Claude Code's own) and SSE time-to-first-byte / total,
    in ms."""
    results = {name: {"json": [], "json_real": [], "ttfb": [], "sse": []} for name in targets}
    clients = {name: httpx.Client(base_url=url, timeout=30) for name, url in targets.items()}
    body_json = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    body_sse = {**body_json, "stream": True}
    body_real = json.dumps({**json.loads(CLAUDE_CODE_REQUEST.read_text())["body"], "stream": False}).encode()
    for _ in range(rounds):
        order = list(targets)
        random.shuffle(order)
        for name in order:
            client = clients[name]
            t0 = time.perf_counter()
            client.post("/v1/messages", json=body_json).raise_for_status()
            results[name]["json"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            client.post("/v1/messages", content=body_real, headers={"content-type": "application/json"}
                        ).raise_for_status()
            results[name]["json_real"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            with client.stream("POST", "/v1/messages", json=body_sse) as response:
                first = None
                for _chunk in response.iter_raw():
                    first = first or time.perf_counter()
            results[name]["ttfb"].append((first - t0) * 1000)
            results[name]["sse"].append((time.perf_counter() - t0) * 1000)
    for client in clients.values():
        client.close()
    return results


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def send_bodies(url: str, count: int, body_kb: int, concurrency: int = 10) -> None:
    """`count` calls whose prompt is `body_kb` KB, half of them streamed."""
    prompt = "x" * body_kb * 1024
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}
    remaining = list(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while remaining:
                stream = remaining.pop() % 2 == 1
                async with client.stream("POST", "/v1/messages", json={**body, "stream": stream}) as response:
                    await response.aread()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """The RSS of a process, and of all its descendants together (the proxy, and its store's writer)."""
    own, total, pending = 0.0, 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += rss_mb(current)
            own = own or total
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # (it ended while we looked)
            continue
    return own, total - own


async def send_unique_bodies(url: str, count: int, body_kb: int, concurrency: int = 10) -> None:
    """`count` non-streamed calls, each with a prompt of `body_kb` KB that no other call has."""
    filler = "x" * body_kb * 1024
    remaining = list(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while remaining:
                prompt = f"{remaining.pop()} {random.random()} " + filler
                body = {"model": "claude-sonnet-4-5", "max_tokens": 64,
                        "messages": [{"role": "user", "content": prompt}]}
                (await client.post("/v1/messages", json=body)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def bulk_run(env: dict[str, str], tmp: Path, upstream: int, calls: int) -> dict[str, float]:
    """The addon proxy alone on the last core (its writer inherits the pinning): peak RSS of the two while `calls`
    unique 50 KB calls go through and are stored, their rate, and the seconds until the store held them all."""
    port, core = free_port(), str((os.cpu_count() or 1) - 1)
    proc = start(["taskset", "-c", core, str(BIN / "mitmdump"), "--mode", f"reverse:http://127.0.0.1:{upstream}",
                  "-p", str(port), "--set", "connection_strategy=lazy", "--set", "termlog_verbosity=error",
                  "--set", "flow_detail=0", "-s", str(ROOT / "addons" / "proxy.py"),
                  "--set", f"state_dir={tmp}/bulk-state", "--set", f"anthropic_upstream=http://127.0.0.1:{upstream}",
                  "--set", f"confdir={tmp}/c4"], env)
    url = f"http://127.0.0.1:{port}"
    peaks = [0.0, 0.0, 0.0]  # proxy + writer, proxy, writer
    sampling = True

    def sample() -> None:
        while sampling:
            own, children = tree_rss_mb(proc.pid)
            for index, value in enumerate((own + children, own, children)):
                peaks[index] = max(peaks[index], value)
            time.sleep(0.02)

    try:
        wait_ready(url)

        def records() -> int:
            return httpx.get(url + "/health", timeout=30).json()["store"]["records"] or 0

        deadline = time.monotonic() + 30
        while records() < 1 and time.monotonic() < deadline:  # (wait_ready's own call)
            time.sleep(0.1)
        stored_before = records()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        asyncio.run(send_unique_bodies(url, calls, 50))
        sent = time.perf_counter() - t0
        while records() < stored_before + calls and time.perf_counter() - t0 < 600:
            time.sleep(0.2)
        stored = time.perf_counter() - t0
        sampling = False
        sampler.join()
        return {"peak_mb": peaks[0], "proxy_mb": peaks[1], "writer_mb": peaks[2], "calls_per_s": calls / sent,
                "stored_s": stored}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def streams_per_second(url: str, total: int, concurrency: int) -> float:
    """`total` streamed calls over `concurrency` keep-alive connections. The client is a few lines of asyncio, not
    httpx: on a small machine a heavy client takes the CPU the proxies need, and ends up measuring itself."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
               f"x-api-key: sk-ant-bench-0000000000000000\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
    queue = list(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue:
                queue.pop()
                writer.write(request)
                answer = await read_response(reader)
                if not answer.startswith(b"event: message_start") or not answer.endswith(b"event: message_stop\n"
                                                                                          b"data: {\"type\": "
                                                                                          b"\"message_stop\"}\n\n"):
                    raise SystemExit(f"{url} sent an incomplete stream: {answer[-200:]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response's body (status 200 checked; chunked, or with a content-length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:200]!r}")
    headers = head.lower()
    if b"transfer-encoding: chunked" not in headers:
        length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        return await reader.readexactly(length)
    parts = []
    while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    await reader.readexactly(2)  # the blank line after the last chunk
    return b"".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="latency rounds per proxy (default 300)")
    parser.add_argument("--streams", type=int, default=250, help="streams per throughput run (default 250)")
    parser.add_argument("--slices", type=int, default=11,
                        help="interleaved throughput runs per proxy and concurrency; the median counts (default 11)")
    parser.add_argument("--rss-requests", type=int, default=10_000,
                        help="calls with 50 KB bodies before reading each proxy's RSS (default 10000; 0 skips)")
    parser.add_argument("--bulk", type=int, default=4000,
                        help="calls of the single-core bulk run with unique 50 KB bodies (default 4000; 0 skips)")
    parser.add_argument("--bulk-only", action="store_true", help="only the bulk run")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    tmp = Path(tempfile.mkdtemp(prefix="anthropic-proxy-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENROUTER_"))}
    env["HOME"] = str(tmp)
    (tmp / "stream_on.py").write_text(STREAM_ADDON)
    upstream = free_port()
    ports = {"bare": free_port(), "bare+stream": free_port(), "addon": free_port()}
    common = ["--mode", f"reverse:http://127.0.0.1:{upstream}", "--set", "connection_strategy=lazy",
              "--set", "termlog_verbosity=error", "--set", "flow_detail=0"]
    procs = [start([sys.executable, __file__, "--serve", str(upstream)], env)]
    if args.bulk_only:
        try:
            wait_ready(f"http://127.0.0.1:{upstream}")
            report_bulk(bulk_run(env, tmp, upstream, args.bulk), args)
        finally:
            os.killpg(procs[0].pid, signal.SIGTERM)
        return
    procs.append(start([str(BIN / "mitmdump"), *common, "-p", str(ports["bare"]),
                        "--set", f"confdir={tmp}/c1"], env))
    procs.append(start([str(BIN / "mitmdump"), *common, "-p", str(ports["bare+stream"]),
                        "-s", str(tmp / "stream_on.py"), "--set", f"confdir={tmp}/c2"], env))
    procs.append(start([str(BIN / "mitmdump"), *common, "-p", str(ports["addon"]), "-s",
                        str(ROOT / "addons" / "proxy.py"), "--set", f"state_dir={tmp}/state",
                        "--set", f"anthropic_upstream=http://127.0.0.1:{upstream}",
                        "--set", f"confdir={tmp}/c3"], env))
    try:
        targets = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for url in targets.values():
            wait_ready(url)
        measure_latency(targets, 20)  # warm-up
        latency = measure_latency(targets, args.rounds)
        time.sleep(3)  # the store's writer finishes the latency phase's records: each phase measures its own work
        streaming = ("bare+stream", "addon")  # (bare mitmdump would buffer the streams: no baseline for these)
        throughput: dict[str, dict[int, list[float]]] = {name: {10: [], 50: []} for name in streaming}
        for concurrency in (10, 50):
            for _ in range(args.slices):  # interleaved slices, random order each time; the median is reported
                for name in random.sample(streaming, len(streaming)):
                    throughput[name][concurrency].append(asyncio.run(
                        streams_per_second(targets[name], args.streams, concurrency)))
        rss: dict[str, tuple[float, float]] = {}
        if args.rss_requests:
            pids = {"bare": procs[1].pid, "addon": procs[3].pid}
            before = {name: rss_mb(pid) for name, pid in pids.items()}
            for _ in range(10):  # interleaved slices, so both proxies see the same machine
                for name in pids:
                    asyncio.run(send_bodies(targets[name], args.rss_requests // 10, 50))
            rss = {name: (before[name], rss_mb(pid)) for name, pid in pids.items()}
        for proc in procs[1:]:  # (the bulk run has the machine to itself)
            os.killpg(proc.pid, signal.SIGSTOP)
        bulk = bulk_run(env, tmp, upstream, args.bulk) if args.bulk else None
        for proc in procs[1:]:
            os.killpg(proc.pid, signal.SIGCONT)
        report(latency, throughput, rss, args)
        if bulk:
            report_bulk(bulk, args)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)


def report(latency: dict, throughput: dict, rss: dict, args: argparse.Namespace) -> None:
    def row(label: str, ours: float, base: float, unit: str, ratio: float | None = None) -> str:
        return f"| {label} | {base:.2f} {unit} | {ours:.2f} {unit} | {ours / base if ratio is None else ratio:.2f}x |"

    ours, bare, bare_stream = latency["addon"], latency["bare"], latency["bare+stream"]
    print(f"{args.rounds} interleaved rounds; SSE answers of {SSE_EVENTS} events; {args.slices} interleaved "
          f"throughput runs of {args.streams} streams per proxy (medians; ratio: median of the slices' ratios); "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("| measure | baseline | anthropic-proxy | ratio |")
    print("|---|---|---|---|")
    for p in (50, 99):
        print(row(f"JSON round trip p{p} (baseline: bare mitmdump)", percentile(ours["json"], p),
                  percentile(bare["json"], p), "ms"))
    size = round(CLAUDE_CODE_REQUEST.stat().st_size / 1024)
    for p in (50, 99):
        print(row(f"JSON round trip p{p}, a Claude Code request of {size} KB (baseline: bare mitmdump)",
                  percentile(ours["json_real"], p), percentile(bare["json_real"], p), "ms"))
    for p in (50, 99):
        print(row(f"SSE time to first byte p{p} (baseline: mitmdump + stream)", percentile(ours["ttfb"], p),
                  percentile(bare_stream["ttfb"], p), "ms"))
    print(row("SSE whole stream p50 (baseline: mitmdump + stream)", statistics.median(ours["sse"]),
              statistics.median(bare_stream["sse"]), "ms"))
    for concurrency in (10, 50):
        ours_rates, base_rates = throughput["addon"][concurrency], throughput["bare+stream"][concurrency]
        # The ratio is the median of each slice's own ratio: the two runs of a slice are a second apart, so the
        # machine's drift (large on a shared VM) cancels out of it, where it would not between two medians.
        paired = statistics.median(a / b for a, b in zip(ours_rates, base_rates, strict=True))
        print(row(f"streams/s at concurrency {concurrency} (baseline: mitmdump + stream)",
                  statistics.median(ours_rates), statistics.median(base_rates), "/s", paired))
    if rss:
        print(row("RSS idle (baseline: bare mitmdump)", rss["addon"][0], rss["bare"][0], "MB"))
        print(row(f"RSS after {args.rss_requests} calls with 50 KB bodies (baseline: bare mitmdump)",
                  rss["addon"][1], rss["bare"][1], "MB"))


def report_bulk(bulk: dict[str, float], args: argparse.Namespace) -> None:
    print(f"| bulk run on one core: {args.bulk} calls with unique 50 KB bodies, concurrency 10 | peak RSS, proxy + "
          f"writer: {bulk['peak_mb']:.0f} MB (each at its peak: proxy {bulk['proxy_mb']:.0f} MB, writer "
          f"{bulk['writer_mb']:.0f} MB) | {bulk['calls_per_s']:.0f} calls/s; all stored after "
          f"{bulk['stored_s']:.1f} s | |")


if __name__ == "__main__":
    main()
