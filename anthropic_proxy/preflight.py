"""Checks the launcher makes before it starts mitmproxy: a bad setting becomes one clear line, not a traceback from
inside mitmproxy, and nothing is left listening (least of all a forward proxy without the addon)."""

from __future__ import annotations

import errno
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mitmproxy_rs

from anthropic_proxy.capture.hosts import parse_capture_hosts

CA_FILE = "mitmproxy-ca-cert.pem"  # what clients trust (mitmproxy writes it to confdir on its first start)
DEFAULT_CONFDIR = "~/.mitmproxy"


class LaunchError(Exception):
    """A setting the proxy cannot start with; its message is the one line the user sees."""


# mitmproxy's own flags for the options the checks read (`-p 9000` is `--set listen_port=9000`).
_FLAGS = {"listen_host": ("--listen-host",), "listen_port": ("-p", "--listen-port")}


def option_values(args: Sequence[str], name: str) -> list[str]:
    """The values mitmproxy arguments give option NAME (`--set NAME=VALUE`, `--set=NAME=VALUE`, or its own flag
    such as `-p PORT`), in order: the last one wins."""
    values = []
    for i, arg in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in _FLAGS.get(name, ()) and following is not None:
            values.append(following)
            continue
        if arg == "--set" and following is not None:
            spec = following
        elif arg.startswith("--set="):
            spec = arg.removeprefix("--set=")
        else:
            continue
        key, sep, value = spec.partition("=")
        if sep and key == name:
            values.append(value)
    return values


def confdir(args: Sequence[str]) -> Path:
    """mitmproxy's confdir (where its CA is) for these arguments."""
    given = option_values(args, "confdir")
    return Path(given[-1] if given else DEFAULT_CONFDIR).expanduser()


def check_capture_hosts(args: Sequence[str], environment_value: str) -> None:
    values = option_values(args, "capture_hosts") or ([environment_value] if environment_value else [])
    try:
        parse_capture_hosts(values)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def check_port_free(host: str, port: int, what: str, change: str) -> None:
    """Raise when something already listens on host:port (bound the way mitmproxy binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(f"port {port} on {host or '0.0.0.0'} ({what}) is in use: stop what listens there, "
                                  f"or {change}") from None
            raise LaunchError(f"cannot listen on {host or '0.0.0.0'}:{port} ({what}): {exc.strerror}") from None


def check_ca_writable(directory: Path) -> None:
    """mitmproxy writes its CA to confdir on its first start and stops with a traceback when it cannot."""
    if (directory / "mitmproxy-ca.pem").is_file():
        return  # there already: mitmproxy only reads it
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise LaunchError(f"mitmproxy cannot write its CA certificate to {directory}: {reason}. Choose a writable "
                          "folder with --set confdir=DIR") from None


def check_local_redirector(process: str) -> None:
    """The redirector's own check (platform, OS version); what else it needs (sudo, eBPF) shows when it starts."""
    reason = mitmproxy_rs.local.LocalRedirector.unavailable_reason()
    if reason:
        raise LaunchError(f"local capture of {process!r} is not available here: {reason}")
