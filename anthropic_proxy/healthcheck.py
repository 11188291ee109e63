"""Health check for anthropic-proxy: exit 0 when GET /health answers {"status": "ok"}, else 1.

Standard library only (and importing nothing else of the package), so it runs in the slim Docker image (no
curl there), from systemd's ExecStartPost, from cron or a monitoring agent, with the installed package's Python:

    python -m anthropic_proxy.healthcheck                # http://127.0.0.1:$PORT/health (PORT defaults to 8082)
    python -m anthropic_proxy.healthcheck --wait 30      # retry for up to 30 s (start-up)
    python -m anthropic_proxy.healthcheck --url http://127.0.0.1:9000/health

/health needs no token, but like every web-app path it answers only to the proxy's own address (the Host
header must be 127.0.0.1, localhost or the listen host, with the port): check it from the same host or
container, through the same port number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def check(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return False, f"{url}: unexpected answer {body!r}"[:400]
    store = body.get("store") or {}
    return True, (f"ok: mode {body.get('mode')}, upstream {body.get('upstream')}, {body.get('inFlight')} in flight, "
                  f"{store.get('records')} records, {store.get('writeErrors', 0)} store write errors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anthropic_proxy.healthcheck", description=__doc__.split("\n\n")[0])
    default_url = f"http://127.0.0.1:{os.environ.get('PORT') or 8082}/health"
    parser.add_argument("--url", default=default_url, help=f"health URL (default {default_url})")
    parser.add_argument("--wait", type=float, default=0, help="keep trying for this many seconds")
    parser.add_argument("--timeout", type=float, default=3, help="seconds per attempt")
    parser.add_argument("--quiet", action="store_true", help="print nothing when healthy")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while True:
        healthy, message = check(args.url, args.timeout)
        if healthy or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not healthy or not args.quiet:
        print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
