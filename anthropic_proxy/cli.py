"""`anthropic-proxy`: start mitmdump (or mitmweb with --web) with the addon and the documented options.

Two subcommands work on the record store without a running proxy (and beside one: neither ends its records),
and one tells where the addon script is (for `mitmdump -s "$(anthropic-proxy addon-path)"`):

    anthropic-proxy export [--format compact|ndjson|json|csv] [--gzip] [-o FILE] [--state-dir DIR] [filters]
    anthropic-proxy import FILE... [--format compact|ndjson|json] [--state-dir DIR]
    anthropic-proxy addon-path

Any other arguments start the proxy; the ones it does not know go to mitmdump/mitmweb, and win over
mitm_config.yaml and the environment. Beside the reverse proxy,
`--forward [[HOST:]PORT]` adds a forward-proxy listener (HTTPS_PROXY capture) and `--local [PROCESS]` mitmproxy's
local redirector; `anthropic-proxy claude [--forward [[HOST:]PORT]] [--] [ARGS...]` runs Claude Code through the
proxy (started for it, or the one already running), with its arguments and exit code passed through.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from ruamel.yaml import YAML

from anthropic_proxy import __version__
from anthropic_proxy.environment import DEFAULT_STATE_DIR, environment
from anthropic_proxy.store.dialects import DB_NAME

# Both ship inside the package, so a wheel works as well as a checkout (`addons/` is the package
# `anthropic_proxy.addons`; its location is looked up without importing it, which would import mitmproxy).
MITM_CONFIG = Path(__file__).resolve().parent / "mitm_config.yaml"
DEFAULT_UPSTREAM = "https://api.anthropic.com"


def addon_script() -> Path:
    """The script to load into mitmproxy (`-s`): `proxy.py` of the installed `anthropic_proxy.addons`."""
    spec = importlib.util.find_spec("anthropic_proxy.addons")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise SystemExit("anthropic-proxy: the package anthropic_proxy.addons is missing; reinstall anthropic-proxy")
    return Path(next(iter(locations))).resolve() / "proxy.py"


def mitm_options(config_file: Path = MITM_CONFIG) -> dict[str, object]:
    """mitm_config.yaml, with HOST/PORT from the environment (or .env) taking precedence."""
    options = dict(YAML(typ="safe").load(config_file.read_text(encoding="utf-8")) or {})
    if host := environment.get("HOST"):
        options["listen_host"] = host
    if port := environment.get("PORT"):
        options["listen_port"] = port
    return options


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


DEFAULT_FORWARD = ("127.0.0.1", 8080)


def forward_address(value: str) -> tuple[str, int]:
    """`--forward`'s `[HOST:]PORT`; the host defaults to loopback, so the forward proxy is nobody else's."""
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port or HOST:PORT: {value!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {number}")
    return host.strip("[]") or DEFAULT_FORWARD[0], number


def _reverse_target(given: list[str]) -> str:
    """The configured upstream's origin. It only names the default destination (the Router routes each call, and
    adds a path prefix), but mitmproxy prints it at start-up and mitmweb shows it. mitmproxy takes no path there;
    an upstream that is no URL is left to the addon, which says what is wrong with it."""
    upstream = (given[-1] if given else "") or environment.get("ANTHROPIC_UPSTREAM_URL") or DEFAULT_UPSTREAM
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return DEFAULT_UPSTREAM
    return f"{parts.scheme}://{parts.netloc}"


def build_command(tool: str, extra_args: list[str], *, forward: tuple[str, int] | None = None,
                  local: str | None = None) -> list[str]:
    """The mitmdump/mitmweb command: modes, script, mitm_config.yaml's options, then the user's arguments.

    mitmproxy refuses two `--set` values for one option, so an option the user sets is left out of the
    yaml's (its own flags, `-p`, `--listen-host`, `-q`, ..., are applied after `--set` and win anyway)."""
    from anthropic_proxy.preflight import option_values

    executable = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
    if executable is None:
        raise SystemExit(f"anthropic-proxy: {tool} not found; install the project with pip first")
    upstream = _reverse_target(option_values(extra_args, "anthropic_upstream"))
    # Giving the mode up front means mitmproxy never listens as a forward proxy, not even briefly.
    command = [executable, "--mode", f"reverse:{upstream}", "-s", str(addon_script())]
    if forward is not None:  # an explicit address: listen_host/listen_port are the reverse listener's
        host, port = forward
        command += ["--mode", f"regular@{host}:{port}"]  # (mitmproxy splits at the last colon: no [] for IPv6)
    if local is not None:
        command += ["--mode", f"local:{local}"]
    for name, value in mitm_options().items():
        if value is not None and not option_values(extra_args, name):
            command += ["--set", f"{name}={_format(value)}"]
    return command + extra_args


def preflight(command: list[str], *, forward: tuple[str, int] | None = None, local: str | None = None) -> None:
    """What would make mitmproxy fail at start-up with a traceback, checked first (raises LaunchError)."""
    from anthropic_proxy.preflight import (
        check_ca_writable,
        check_capture_hosts,
        check_local_redirector,
        check_port_free,
        confdir,
        option_values,
    )

    check_capture_hosts(command, environment.get("CAPTURE_HOSTS"))
    check_ca_writable(confdir(command))
    host, port = option_values(command, "listen_host")[-1], option_values(command, "listen_port")[-1]
    check_port_free(host, int(port), "the reverse proxy and web pages", "choose another port with PORT=N")
    if forward is not None:
        check_port_free(*forward, "the forward proxy", "choose another with --forward PORT")
    if local is not None:
        check_local_redirector(local)


SUBCOMMANDS = ("export", "import")
ADDON_PATH_COMMAND = "addon-path"


def _state_dir(value: str | None) -> Path:
    return Path(value or environment.get("ANTHROPIC_PROXY_HOME") or DEFAULT_STATE_DIR).expanduser()


def _instant(value: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def store_command(argv: list[str]) -> int:
    """`export` / `import`: see the module docstring."""
    from anthropic_proxy.reports.export import FORMATS, export_chunks, gzipped
    from anthropic_proxy.reports.importing import ImportFailed, read_records
    from anthropic_proxy.store import RecordFilter, Store, parse_time_range

    parser = argparse.ArgumentParser(prog="anthropic-proxy", description="Export or import recorded calls.")
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write the records (all, or those matching the filters)")
    out.add_argument("--format", choices=FORMATS, default="compact",
                     help="compact (default: lossless, each conversation's history once), ndjson, json or csv")
    out.add_argument("--gzip", action="store_true", help="compress the output")
    out.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    for name in ("status", "model", "provider", "session", "q"):
        out.add_argument(f"--{name}", help=f"only records with this {name}" if name != "q" else
                         "only records whose prompt or answer contains this text")
    out.add_argument("--time-range", choices=("1h", "24h", "7d", "30d"), help="only the recent records")
    out.add_argument("--since", type=_instant, help="only records from this time (ISO 8601)")
    out.add_argument("--until", type=_instant, help="only records up to this time (ISO 8601)")
    into = commands.add_parser("import", help="add the records of export files (records already there are skipped)")
    into.add_argument("files", nargs="+", help="export files (compact, ndjson or json; gzipped or not); - for stdin")
    into.add_argument("--format", choices=("compact", "ndjson", "json"), help="insist on this format")
    for sub in (out, into):
        sub.add_argument("--state-dir", help="the proxy's state dir (default: $ANTHROPIC_PROXY_HOME or "
                         f"{DEFAULT_STATE_DIR})")
        sub.add_argument("--store-url", default=environment.get("STORE_URL"),
                         help="the proxy's store_url: postgresql://... (default: $STORE_URL; empty: SQLite in the "
                         "state dir)")
    args = parser.parse_args(argv)
    state_dir = _state_dir(args.state_dir)
    if args.command == "export" and not args.store_url and not (state_dir / DB_NAME).is_file():
        # (opening the store would create an empty one there and export nothing)
        print(f"anthropic-proxy export: no record store in {state_dir} ({DB_NAME} not found); give the proxy's "
              "--state-dir, or --store-url for PostgreSQL", file=sys.stderr)
        return 2
    store = Store(state_dir, url=args.store_url, close_orphans=False)
    try:
        if args.command == "export":
            since = max(filter(None, (parse_time_range(args.time_range), args.since)), default=None)
            flt = RecordFilter(status=args.status, model=args.model, provider=args.provider, session=args.session,
                               q=args.q, since=since, until=args.until)
            chunks = export_chunks(store.iter_records(flt), args.format)
            data = gzipped(chunks) if args.gzip else (chunk.encode() for chunk in chunks)
            with contextlib.ExitStack() as stack:
                target = sys.stdout.buffer if args.output == "-" else stack.enter_context(open(args.output, "wb"))
                try:
                    for piece in data:
                        target.write(piece)
                    target.flush()
                except BrokenPipeError:  # `export | head`: the reader has what it wanted
                    if target is not sys.stdout.buffer:
                        raise
                    # Python flushes stdout again at exit: point it at /dev/null so that raises nothing either.
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    return 1
            return 0
        status = 0
        for name in args.files:
            result: dict[str, object] = {}
            try:
                with contextlib.ExitStack() as stack:
                    source = sys.stdin.buffer if name == "-" else stack.enter_context(open(name, "rb"))
                    counts = store.import_records(read_records(source, args.format, result))
            except (ImportFailed, OSError) as exc:
                print(f"{name}: nothing imported: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"{name}: {result.get('format')}: {counts['records']} records, {counts['imported']} imported, "
                  f"{counts['skipped']} already there")
        return status
    finally:
        store.close()


HELP_EPILOG = """\
other commands:
  anthropic-proxy export [...]   write the recorded calls (compact, ndjson, json, csv); see export --help
  anthropic-proxy import FILE    load an export back into the record store; see import --help
  anthropic-proxy addon-path     print the addon script, for mitmdump -s "$(anthropic-proxy addon-path)"
  anthropic-proxy claude [--forward [[HOST:]PORT]] [--] [ARGS...]
                                 run Claude Code through the proxy (the running one, or one started for it)

examples:
  anthropic-proxy -p 9000                             listen on 127.0.0.1:9000 (or PORT=9000)
  anthropic-proxy --host 0.0.0.0 --set web_hosts=myhost.lan
                                                      serve other machines that open it by that name (the
                                                      pages need a token: web_token, or the printed one)
  anthropic-proxy --set proxy_mode=openrouter         any mitmproxy option; yours win over mitm_config.yaml
  anthropic-proxy --web                               mitmweb: mitmproxy's UI on http://127.0.0.1:8081
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        raise SystemExit(store_command(argv))
    if argv and argv[0] == "claude":
        from anthropic_proxy.claude_run import run_claude

        raise SystemExit(run_claude(argv[1:]))
    if argv[:1] == [ADDON_PATH_COMMAND]:
        print(addon_script())
        return
    parser = argparse.ArgumentParser(
        prog="anthropic-proxy", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP_EPILOG,
        allow_abbrev=False,  # (an abbreviation of ours must not swallow one of mitmproxy's flags)
        description="Start mitmproxy as an Anthropic API proxy (http://127.0.0.1:8082 by default).\n"
        "Arguments it does not know go to mitmdump/mitmweb, e.g. --set NAME=VALUE for any option.",
    )
    parser.add_argument("-p", "--port", type=int, help="port to listen on (same as --set listen_port=PORT; env PORT)")
    parser.add_argument("--host", help="address to listen on (same as --set listen_host=HOST; env HOST)")
    parser.add_argument("--web", action="store_true", help="start mitmweb (mitmproxy's web UI) instead of mitmdump")
    parser.add_argument("--print-command", action="store_true", help="print the mitmproxy command and exit")
    parser.add_argument("--forward", nargs="?", const=":".join(map(str, DEFAULT_FORWARD)), type=forward_address,
                        metavar="[HOST:]PORT",
                        help="also listen as a forward proxy (default 127.0.0.1:8080): clients with HTTPS_PROXY "
                        "and mitmproxy's CA are captured with their official base URL (hosts in capture_hosts)")
    parser.add_argument("--local", nargs="?", const="claude", metavar="PROCESS",
                        help="also capture the traffic of PROCESS (default claude) with mitmproxy's local redirector "
                        "(needs sudo; on Linux a kernel with eBPF)")
    parser.add_argument("--version", action="version", version=f"anthropic-proxy {__version__}")
    args, extra = parser.parse_known_args(argv)
    if args.host is not None:
        extra = ["--set", f"listen_host={args.host}", *extra]
    if args.port is not None:
        extra = ["--set", f"listen_port={args.port}", *extra]
    command = build_command("mitmweb" if args.web else "mitmdump", extra, forward=args.forward, local=args.local)
    if args.print_command:
        print(" ".join(command))
        return
    from anthropic_proxy.preflight import LaunchError

    try:
        preflight(command, forward=args.forward, local=args.local)
    except LaunchError as exc:
        raise SystemExit(f"anthropic-proxy: {exc}") from None
    os.execv(command[0], command)
