"""The ``asrpool`` command: one entry point, a subcommand per action."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from supervisor.config import (
    COMPUTE_TYPES,
    DEVICES,
    LOG_FORMATS,
    ConfigError,
    Overrides,
    apply_overrides,
    load_config,
)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the server in the foreground",
                       description="Run the gateway and its worker pool in the foreground. "
                       "Flags override the config file (model flags apply to the first model).")
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes for the model (default 2)")
    p.add_argument("--model", help="tiny.en (embedded), a model directory, or a model name")
    p.add_argument("--device", choices=DEVICES, help="cpu, cuda or auto (default auto)")
    p.add_argument("--compute-type", choices=COMPUTE_TYPES,
                   help="CTranslate2 compute type (default auto: int8 on CPU, float16 on CUDA)")
    p.add_argument("--cpu-threads", type=int,
                   help="threads per worker (default: the cores shared among workers)")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json")
    p.add_argument("--enable-faults", action="store_true", default=None,
                   help="accept crash-injection requests (testing only)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from supervisor.serve import serve

    try:
        config = apply_overrides(load_config(args.config), Overrides(
            host=args.host, port=args.port, workers=args.workers, model=args.model,
            device=args.device, compute_type=args.compute_type, cpu_threads=args.cpu_threads,
            log_format=args.log_format, faults_enabled=args.enable_faults,
        ))
    except ConfigError as exc:
        print(f"asrpool: config error: {exc}", file=sys.stderr)
        return 2
    return serve(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asrpool",
        description="Speech-to-text server: faster-whisper models in supervised worker "
                    "processes behind an OpenAI-compatible API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
