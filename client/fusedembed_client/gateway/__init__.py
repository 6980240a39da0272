"""OpenAI-compatible and text-embeddings-inference-style HTTP gateway in front of Triton.

Installed with the ``gateway`` extra (``pip install 'fusedembed-client[gateway]'``); run with
``fusedembed gateway`` (``--triton-url``, ``--host``, ``--port``; every setting also from
``FUSEDEMBED_GATEWAY_<NAME>``). The plain client does not import it.
"""

from fusedembed_client.gateway.settings import Settings

__all__ = ["Settings", "create_app", "serve"]


def create_app(settings: Settings, triton=None, tracing=None):
    """The ASGI application (Starlette) for ``settings``; ``triton`` replaces the gRPC
    backend in unit tests. ``tracing`` (default: from OpenTelemetry's environment variables,
    ``gateway.tracing``) instruments it when an OTLP endpoint is set."""
    from fusedembed_client.gateway.app import Gateway
    from fusedembed_client.gateway.tracing import TraceSettings, instrument

    app = Gateway(settings, triton).app()
    tracing = TraceSettings.from_env() if tracing is None else tracing
    if tracing.enabled:
        instrument(app, tracing)
    return app


def serve(settings: Settings) -> None:
    """Run the gateway with uvicorn until SIGINT/SIGTERM."""
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO if settings.access_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=5)
