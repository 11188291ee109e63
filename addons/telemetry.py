"""OpenTelemetry traces: the `otel_endpoint` option, and the store's tracing (its writer process makes the spans)
kept in step with it and with the standard `OTEL_*` environment variables (see anthropic_proxy/telemetry/tracing.py).
Prometheus metrics need no addon: the runtime always counts, and the web app serves `/metrics`."""

from __future__ import annotations

import logging
import os

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from anthropic_proxy import runtime as runtime_module
from anthropic_proxy.telemetry.tracing import check_installed, trace_config

logger = logging.getLogger("anthropic_proxy")


class Telemetry:
    def load(self, loader: Loader) -> None:
        loader.add_option("otel_endpoint", str, "",
                          "Send an OpenTelemetry span per API call to this OTLP collector, e.g. http://127.0.0.1:4318 "
                          "(needs anthropic-proxy[otel]). Empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no traces.")

    def configure(self, updated: set[str]) -> None:
        runtime = runtime_module.current_runtime()
        if runtime is None:
            return
        try:
            config = trace_config(ctx.options.otel_endpoint, os.environ)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        store = runtime.store
        if config == store.tracing:  # (a script reload changes nothing)
            return
        if config is not None:
            try:
                check_installed(config)
            except ImportError as exc:
                raise exceptions.OptionsError(
                    f"OpenTelemetry traces need the otel extra: pip install 'anthropic-proxy[otel]' ({exc})") from None
            endpoint = config.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") \
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            logger.info("anthropic-proxy sends an OpenTelemetry span per call to %s (%s%s)", endpoint, config.protocol,
                        ", with prompts and answers" if config.capture_content else "")
        store.configure_tracing(config)
