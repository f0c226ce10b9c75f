"""The ``asrpool`` command: one entry point, a subcommand per action."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from supervisor.admin_client import AdminClient, CLIError, find_token
from supervisor.config import (
    COMPUTE_TYPES,
    DEVICES,
    LOG_FORMATS,
    ConfigError,
    Overrides,
    apply_overrides,
    load_config,
)
from supervisor.protocol import FAULT_KINDS, FAULT_WHEN


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


# ------------------------------------------------------------------ admin commands


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the server (default: from --config, else "
                   "http://127.0.0.1:8000)")
    p.add_argument("--token", help="admin token (default: ASRPOOL_ADMIN_TOKEN, else the "
                   "token file the server wrote for this user)")
    p.add_argument("--config", metavar="FILE", help="config file to take the URL from")


def _client(args: argparse.Namespace) -> AdminClient:
    url = args.url
    if not url:
        try:
            server = load_config(args.config).server
        except ConfigError as exc:
            raise CLIError(f"config error: {exc}", code=2) from None
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal
        url = f"http://{host}:{server.port}"
    return AdminClient(url, find_token(url, args.token))


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_status(status: dict[str, Any]) -> str:
    """The worker table and pool summary that ``asrpool status`` prints. Pure."""
    columns = ["ID", "PID", "MODEL", "DEVICE", "STATE", "UPTIME", "JOBS", "RESTARTS",
               "LAST EXIT", "RSS MB", "JOB AGE"]
    rows = [[
        str(w["id"]), str(w["pid"] or "-"), w["model"], w["device"],
        w["state"] + (" (retiring)" if w.get("retiring") else ""),
        _fmt_seconds(w["uptime"]) if w["pid"] else "-", str(w["jobs_done"]),
        str(w["restarts"]), w["last_exit"] or "-",
        f"{w['rss_mb']:.0f}" if w["rss_mb"] is not None else "-",
        _fmt_seconds(w["job_age"]),
    ] for w in status["workers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(columns)).rstrip()]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in rows]
    for w in status["workers"]:
        if w.get("boot_error"):
            lines.append(f"worker {w['id']}: boot error: {w['boot_error']}")
    state = "ready" if status["ready"] else ("draining" if status["draining"] else "not ready")
    lines.append("")
    lines.append(f"pool: {state}   queue depth: {status['queue_depth']}   "
                 f"in flight: {status['in_flight']}   "
                 f"quarantined inputs: {len(status['quarantined'])}")
    for q in status["quarantined"]:
        lines.append(f"  quarantined {q['fingerprint']} ({q['model']}): {q['reason']}, "
                     f"expires in {_fmt_seconds(q['expires_in'])}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    while True:
        status = client.call("GET", "/admin/status")
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(format_status(status), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)


def cmd_restart(args: argparse.Namespace) -> int:
    if not args.workers and not args.all:
        raise CLIError("name the workers to restart, or pass --all", code=2)
    body = {"workers": args.workers or None, "all": args.all, "force": args.force}
    result = _client(args).call("POST", "/admin/restart", body)
    print(f"restarted: {', '.join(map(str, result['restarted'])) or 'none'}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"workers": args.n}
    if args.model:
        body["model"] = args.model
    result = _client(args).call("POST", "/admin/scale", body)
    print(f"{result['model']}: {result['workers']} workers")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", "/admin/drain")
    print("drained" + ("" if result["finished_in_time"] else
                       " (work still running at graceful_timeout was failed)"))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", "/admin/stop")
    print("stopping" + ("" if result["finished_in_time"] else
                        " (work still running at graceful_timeout was failed)"))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    body = {"worker": args.worker, "fault": args.fault, "when": args.when, "arg": args.arg}
    _client(args).call("POST", "/admin/inject", body)
    print(f"injected {args.fault} ({args.when}) into worker {args.worker}")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from supervisor import chaos

    if args.clients < 1 or not args.duration > 0 or not args.rate >= 0 \
            or args.rolling_restarts < 0:
        raise CLIError("--clients must be >= 1, --duration > 0, --rate and "
                       "--rolling-restarts >= 0", code=2)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULT_KINDS]
    if unknown or not faults:
        raise CLIError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}",
                       code=2)
    token = find_token(args.url, args.token) if args.url else None
    try:
        return chaos.main(args.url, token, clients=args.clients, duration=args.duration,
                          rate=args.rate, faults=faults, seed=args.seed,
                          audio_paths=args.audio, workers=args.workers, out=args.out,
                          server_log=args.server_log, rolling_restarts=args.rolling_restarts)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from supervisor import bench

    try:
        return bench.main(args.requests, args.out, args.max_workers, args.crash_trials,
                          args.vad_minutes)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="benchmark against in-process faster-whisper and a single-lock server",
        description="Measure, in one run on this machine: in-process faster-whisper, the "
        "single-lock server design, and asrpool with 1..N workers, at concurrency 1 and 4; "
        "asrpool's overhead, crash recovery and large-upload transport. Prints a table and "
        "writes JSON.")
    p.add_argument("--requests", type=int, default=12, help="requests per series (12)")
    p.add_argument("--max-workers", type=int, default=2, help="asrpool runs with 1..N workers")
    p.add_argument("--crash-trials", type=int, default=3, help="SIGSEGV trials (3)")
    p.add_argument("--vad-minutes", type=float, default=10.0,
                   help="length of the recording with silences timed with and without "
                   "vad_filter (10; 0 skips it)")
    p.add_argument("--out", default="bench-results/bench.json", help="JSON report path")
    p.set_defaults(func=cmd_bench)


def _add_chaos(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "chaos", help="inject random faults under load and check nothing is lost",
        description="Drive a server (--url, which must run with --enable-faults) or one "
        "started here, with C clients for D seconds while injecting random faults at R per "
        "second. Prints a JSON report; exits 1 if a request was lost, a transcript differs "
        "from the fault-free one, the pool did not come back whole, or a child process "
        "was left behind.")
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--token", help="its admin token (default: as the other commands)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (60)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="faults per second (1; 0: none, then no request may fail)")
    p.add_argument("--rolling-restarts", type=int, default=0, metavar="N",
                   help="also run N rolling restarts of the pool (restart --all)")
    p.add_argument("--faults", default="segv,abort,exit,hang,kill",
                   help="comma-separated fault kinds (segv,abort,exit,hang,kill)")
    p.add_argument("--seed", type=int, help="random seed, to replay a run")
    p.add_argument("--audio", nargs="*", default=[], metavar="FILE",
                   help="audio files to send (default: the test fixtures)")
    p.add_argument("--workers", type=int, default=2, help="workers of the server it starts")
    p.add_argument("--out", metavar="FILE", help="also write the report here")
    p.add_argument("--server-log", metavar="FILE", help="where the started server logs")
    p.set_defaults(func=cmd_chaos)


def _add_admin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show every worker and the queue",
                       description="Show every worker (id, pid, model, device, state, "
                       "uptime, jobs, restarts, last exit, RSS, current job age), the queue "
                       "depth, in-flight requests and quarantined inputs.")
    _add_client_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restart", help="restart workers (graceful by default)",
                       description="Restart workers one after another. Graceful: each "
                       "replacement is ready before the old worker finishes its job and "
                       "stops, so no request fails. --force kills at once; the job in flight "
                       "is retried. Exits non-zero if a replacement failed.")
    _add_client_options(p)
    p.add_argument("workers", nargs="*", type=int, metavar="WORKER", help="worker ids")
    p.add_argument("--all", action="store_true", help="every worker (a rolling restart)")
    p.add_argument("--force", action="store_true", help="kill at once, retry the job")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("scale", help="set a model's worker count",
                       description="Add or remove workers at runtime; removed workers "
                       "finish their job first.")
    _add_client_options(p)
    p.add_argument("n", type=int, metavar="N", help="the number of workers")
    p.add_argument("--model", help="the model (default: the first one)")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("drain", help="stop accepting work, finish it, stop the workers",
                       description="New requests get 503 and /ready 503; in-flight work "
                       "finishes within graceful_timeout; then the workers stop. The server "
                       "keeps answering /health and the admin API.")
    _add_client_options(p)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("stop", help="drain, then stop the server",
                       description="Drain, then stop the server process (it exits 0).")
    _add_client_options(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("inject", help="inject a fault into a worker (testing)",
                       description="Inject a real fault into a worker. The server must run "
                       "with --enable-faults.")
    _add_client_options(p)
    p.add_argument("--worker", type=int, required=True, help="worker id")
    p.add_argument("--fault", required=True, choices=FAULT_KINDS)
    p.add_argument("--when", default="now", choices=FAULT_WHEN)
    p.add_argument("--arg", type=float, default=0.0,
                   help="exit code (exit), seconds (slow) or MB (leak)")
    p.set_defaults(func=cmd_inject)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asrpool",
        description="Speech-to-text server: faster-whisper models in supervised worker "
                    "processes behind an OpenAI-compatible API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_admin(sub)
    _add_chaos(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CLIError as exc:
        print(f"asrpool: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, ValueError, httpx.InvalidURL) as exc:
        # A bad --url, an unreadable file, a runtime dir we may not write: one line.
        print(f"asrpool: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
