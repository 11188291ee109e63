"""`anthropic-proxy`: start mitmdump (or mitmweb with --web) with the addon and the documented options."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ruamel.yaml import YAML

from . import __version__
from .environment import environment

ADDON_SCRIPT = Path(__file__).resolve().parent.parent / "addons" / "proxy.py"
MITM_CONFIG = Path(__file__).resolve().parent.parent / "mitm_config.yaml"


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


def build_command(tool: str, extra_args: list[str]) -> list[str]:
    executable = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
    if executable is None:
        raise SystemExit(f"anthropic-proxy: {tool} not found; install the project with pip first")
    upstream = environment.get("ANTHROPIC_UPSTREAM_URL", "https://api.anthropic.com")
    # Giving the mode up front means mitmproxy never listens as a forward proxy, not even briefly.
    command = [executable, "--mode", f"reverse:{upstream}", "-s", str(ADDON_SCRIPT)]
    for name, value in mitm_options().items():
        if value is not None:
            command += ["--set", f"{name}={_format(value)}"]
    return command + extra_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="anthropic-proxy",
        description="Start mitmproxy as an Anthropic API proxy. Unknown arguments go to mitmdump/mitmweb, "
        "e.g. --set proxy_mode=openrouter.",
    )
    parser.add_argument("--web", action="store_true", help="start mitmweb (mitmproxy's web UI) instead of mitmdump")
    parser.add_argument("--print-command", action="store_true", help="print the mitmproxy command and exit")
    parser.add_argument("--version", action="version", version=f"anthropic-proxy {__version__}")
    args, extra = parser.parse_known_args(argv)
    if not ADDON_SCRIPT.is_file() or not MITM_CONFIG.is_file():
        raise SystemExit("anthropic-proxy: run it from an editable install of the repository (pip install -e .)")
    command = build_command("mitmweb" if args.web else "mitmdump", extra)
    if args.print_command:
        print(" ".join(command))
        return
    os.execv(command[0], command)
