"""Commands that export, serve and query TF Serving models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import fail, framing_option


@cli.command("export")
@click.argument("model_spec", metavar="MODEL")
@click.option("--name", required=True, help="Served model name, e.g. psyattr_attractive.")
@click.option("--version", "version", type=click.IntRange(1, 2**63 - 1), help="Version number [default: latest + 1].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("saved_models"),
              show_default=True, help="Models folder: versions go to OUT/NAME/VERSION.")
@click.option("--composite", default="alpha2beta1", show_default=True, help="LRP composite of the explain signatures.")
@framing_option("The framing the export says its photos need [default: the one the model records].")
def export_command(model_spec: str, name: str, version: int | None, out: Path, composite: str, framing) -> None:
    """Export MODEL (a run folder or .keras file) as a TF Serving version with predict and explain signatures."""
    from psyattr.export import SIGNATURES, ExportError, export_model
    from psyattr.lrp import COMPOSITES, LRPError

    if composite not in COMPOSITES:
        fail(f"unknown composite {composite!r}: expected one of {', '.join(sorted(COMPOSITES))}")
    try:
        path = export_model(model_spec, out, name, version, composite, framing if framing is not None else "model")
    except (ExportError, LRPError, FileExistsError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(f"exported {name} version {path.name} to {path} (signatures {', '.join(SIGNATURES)})")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@cli.command()
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=Path("saved_models"),
              show_default=True, help="Models folder: MODELS/NAME/VERSION.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TF Serving model config (model_config_list): names, version policies, labels.")
@click.option("--batching-parameters", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TF Serving batching parameters file [default: max 16 images, 2 ms timeout].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8500, show_default=True,
              help="gRPC port; 0 picks a free port.")
@click.option("--rest-port", type=click.IntRange(0, 65535), default=8501, show_default=True,
              help="REST API port (same host); 0 picks a free port.")
@click.option("--no-rest", is_flag=True, help="Serve gRPC only.")
@click.option("--rest-max-body-mb", type=click.IntRange(1, 2047), default=64, show_default=True,
              help="Largest REST request body; larger ones get 413 before they are read.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="How often version folders are checked for new versions.")
@click.option("--max-message-mb", type=click.IntRange(1, 2047), default=64, show_default=True,
              help="Largest request accepted.")
@click.option("--xla-cpu-compilation-enabled", is_flag=True,
              help="Allow the explain_xla signature (TF Serving's --xla_cpu_compilation_enabled=true).")
@click.option("--grace-seconds", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On Ctrl-C or SIGTERM, how long requests in flight may take to finish.")
def serve(models, config, batching_parameters, host, port, rest_port, no_rest, rest_max_body_mb, poll_seconds,
          max_message_mb, xla_cpu_compilation_enabled, grace_seconds) -> None:
    """Serve exported models over TF Serving's gRPC and REST APIs until interrupted (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    from psyattr.serving import ModelServer, read_batching_parameters
    from psyattr.serving.config import ConfigError

    try:
        batching = read_batching_parameters(batching_parameters) if batching_parameters else None
        server = ModelServer(models, config, batching, host, port, poll_seconds, max_message_mb << 20,
                             xla_cpu_compilation_enabled, rest_port=None if no_rest else rest_port,
                             rest_max_body_bytes=rest_max_body_mb << 20).start()
    except (ConfigError, OSError) as err:
        fail(str(err))
    if not _is_loopback(host):
        click.echo(f"warning: serving on {host}, which other machines can reach: the gRPC API has no authentication "
                   "and no encryption, so anyone who reaches the port can use the models. Put it behind a proxy that "
                   "adds TLS and access control (serving/README.md), or keep --host 127.0.0.1.", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"serving {', '.join(server.models()) or 'no models yet'} on {server.address} "
               "(gRPC: tensorflow.serving.PredictionService, ModelService)"
               + (f" and {server.rest_address} (REST: /v1/models/NAME)" if server.rest_address else ""), nl=True)
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.stop(grace_seconds)
    click.echo("stopped")


