"""Command line of ``mesh_server.py``: flags, logging setup, signals.

The only place in the server that touches process-wide state (signal
handlers, the root logger); the ``MeshServer`` itself has none.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import (byte_size, directory_problem, file_name, host_id, host_port,
                       host_ports, info_text, listen_host, port_number, positive_int, seconds,
                       server_name, size_at_least)
from ..protocol import DEFAULT_LIMITS
from ..credentials import StartupError, credentials
from ..visible import VisibleFormatter, visible
from ..jobs.compilers import installed
from ..net.heap import keep_chunk_buffers
from .config_file import ConfigError, merged_argv, render
from .metrics import MetricsServer
from .jobs.service import JobConfig, JobService
from .server import MeshServer, ServerConfig

if TYPE_CHECKING:
    from ..net.tls import ServerTLS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh_server.py",
        description="Run a CRC Mesh relay server (CRC v1 compatible).")
    p.add_argument("--port", type=port_number, required=True,
                   help="TCP port to listen on (0: any free port)")
    p.add_argument("--id", type=host_id, default=0,
                   help="this server's 32-bit id (default: random)")
    p.add_argument("--name", type=server_name, default="",
                   help="server name, up to 255 bytes of UTF-8 (default: server-ID)")
    p.add_argument("--info", type=info_text, default="",
                   help="free text about this server, up to 65535 bytes of UTF-8")
    p.add_argument("--host", type=listen_host, default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--connect", type=host_ports, metavar="HOST:PORT[,HOST:PORT...]",
                   action="extend", default=[],
                   help="join an existing mesh through this server; with several "
                   "(comma-separated or repeated), the others are tried in turn when the "
                   "uplink is lost or cannot be reached")
    p.add_argument("--no-rejoin", action="store_true",
                   help="stay apart after losing the uplink (plain CRC v1 behaviour)")
    jobs = p.add_argument_group("build jobs")
    jobs.add_argument("--slots", type=positive_int, default=os.cpu_count() or 1,
                      help="jobs run at once on this server (default: CPU count)")
    jobs.add_argument("--work-dir", type=file_name("--work-dir"),
                      help="where job directories and the file store live "
                      "(default: a temporary directory, removed at exit)")
    jobs.add_argument("--load-interval", type=seconds, default=2.0,
                      help="seconds between load reports at the latest (default: 2)")
    jobs.add_argument("--max-runtime", type=seconds, default=3600.0,
                      help="seconds a job may run at most (default: 3600)")
    jobs.add_argument("--max-output", type=byte_size, default=64 << 20,
                      help="bytes of output a job may write (default: 64 MiB)")
    jobs.add_argument("--max-file", type=byte_size, default=1 << 30,
                      help="bytes per required or returned file (default: 1 GiB)")
    bounds = p.add_argument_group("limits and liveness")
    bounds.add_argument("--max-connections", type=positive_int, default=2048,
                        help="open connections at most; more are refused (default: 2048)")
    bounds.add_argument("--registration-timeout", type=seconds, default=10.0,
                        help="seconds a new connection has to register (default: 10)")
    bounds.add_argument("--max-send-buffer", type=size_at_least(64 << 10), default=64 << 20,
                        help="bytes queued for a peer before it is dropped; from half of it "
                        "nothing more is read from that peer (default: 64 MiB)")
    bounds.add_argument("--max-frame", type=size_at_least(64 << 10), default=16 << 20,
                        help="bytes of the largest extension frame accepted (default: 16 MiB)")
    bounds.add_argument("--join-timeout", type=seconds, default=5.0,
                        help="seconds the server we join has to answer our registration "
                        "before the next --connect candidate is tried (default: 5)")
    bounds.add_argument("--keepalive", type=seconds, default=5.0,
                        help="seconds of quiet before a mesh link is pinged (default: 5)")
    bounds.add_argument("--dead-after", type=seconds, default=15.0,
                        help="seconds of silence after which a mesh link is dropped "
                        "(default: 15)")
    jobs.add_argument("--store-max", type=byte_size, default=4 << 30, metavar="SIZE",
                      help="bytes the file store may hold (received, produced and relayed "
                      "files, kept so a file crosses a link once); past it the least recently "
                      "used files no job needs are removed (default: 4G)")
    jobs.add_argument("--compilers", type=compiler_names, default=None, metavar="NAMES",
                      help="comma-separated compilers on PATH this server offers to meshcc "
                      "(each is named by its content: triple, version, digest); 'none' for "
                      "none (default: cc, gcc, c++, g++, clang, clang++ where found)")
    jobs.add_argument("--cache-max", type=positive_int, default=100_000, metavar="N",
                      help="compile cache entries kept (meshcc; the objects themselves count "
                      "towards --store-max) (default: 100000)")
    jobs.add_argument("--max-jobs-per-client", type=positive_int, default=256,
                      help="unfinished jobs one client may have through this server "
                      "(default: 256)")
    jobs.add_argument("--state-dir", type=file_name("--state-dir"), metavar="DIR",
                      help="where job results and the file store are kept until clients "
                      "collect them; a restart with the same directory (and --id) keeps them "
                      "fetchable (default: inside the work directory)")
    jobs.add_argument("--result-ttl", type=seconds, default=24 * 3600.0,
                      metavar="SECONDS",
                      help="seconds a job result nobody collected is kept (default: 86400)")
    tls = p.add_argument_group("TLS (docs/security.md)")
    tls.add_argument("--tls-cert", type=file_name("--tls-cert"), metavar="FILE",
                     help="this server's certificate (PEM); with --tls-key and --tls-ca every "
                     "link of this server, accepted or uplink, speaks TLS")
    tls.add_argument("--tls-key", type=file_name("--tls-key"), metavar="FILE",
                     help="the private key of --tls-cert (PEM, not passphrase-protected)")
    tls.add_argument("--tls-ca", type=file_name("--tls-ca"), metavar="FILE",
                     help="the CA certificate(s) (PEM) every peer certificate must be signed by")
    tls.add_argument("--tls-require-client-cert", action="store_true",
                     help="refuse clients without a certificate (servers always need one)")
    tls.add_argument("--tls-server-name", type=listen_host, metavar="NAME",
                     help="the name the uplink's certificate must carry (default: the host "
                     "given to --connect, a DNS name or an IP address)")
    auth = p.add_argument_group("authentication (docs/security.md)")
    auth.add_argument("--secret-file", type=file_name("--secret-file"), metavar="FILE",
                      help="the mesh secret (at least 16 bytes; the trailing newline is "
                      "ignored; not readable by other users): servers must prove it to link, "
                      "clients to run jobs")
    auth.add_argument("--plain-clients", choices=["allow", "deny"], default="allow",
                      help="with --secret-file: whether clients that do not prove the secret "
                      "(plain CRC v1 clients among them) may chat (default: allow)")
    auth.add_argument("--insecure-remote-jobs", action="store_true",
                      help="without --secret-file: run jobs for clients and servers on other "
                      "machines too (default: loopback only). Anyone who can connect can then "
                      "run commands as this user")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.add_argument("--log-file", type=file_name("--log-file"),
                   help="write the log here instead of standard error")
    p.add_argument("--metrics", type=metrics_address, metavar="[HOST:]PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST "
                   "default 127.0.0.1)")
    p.add_argument("--config", metavar="FILE",
                   help="read settings from this TOML file (any flag above, without its "
                   "dashes: port = 7000, connect = [\"host:7000\"]); flags given here "
                   "override it (docs/deploy.md)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as such a file, and exit")
    return p


TLS_FLAGS = ("tls_cert", "tls_key", "tls_ca", "tls_require_client_cert", "tls_server_name")


def tls_from_args(args: argparse.Namespace) -> "ServerTLS | None":
    """The server's TLS from its flags; None without them. ``TLSConfigError``
    (naming the flag and the file) for anything that cannot be used."""
    from ..net.tls import TLSConfigError, server_tls
    given = [f for f in ("tls_cert", "tls_key", "tls_ca") if getattr(args, f)]
    extras = [f for f in ("tls_require_client_cert", "tls_server_name") if getattr(args, f)]
    if not given:
        if extras:
            raise TLSConfigError(f"--{extras[0].replace('_', '-')} needs --tls-cert, --tls-key "
                                 "and --tls-ca")
        return None
    missing = [f for f in ("tls_cert", "tls_key", "tls_ca") if not getattr(args, f)]
    if missing:
        raise TLSConfigError("TLS needs --tls-cert, --tls-key and --tls-ca together; missing: "
                             + ", ".join("--" + f.replace("_", "-") for f in missing))
    return server_tls(args.tls_cert, args.tls_key, args.tls_ca,
                      require_client_cert=args.tls_require_client_cert,
                      server_name=args.tls_server_name,
                      handshake_timeout=args.registration_timeout)


def resolve_candidates(candidates: list[tuple[str, int]]) -> tuple[list[tuple[str, int]],
                                                                    dict[str, str], list[str]]:
    """Look up each candidate's host once, before the loop starts (the loop
    itself never waits on DNS): the candidates that resolved, their
    addresses by host name, and a line for each that did not."""
    usable, addresses, problems = [], {}, []
    for host, port in candidates:
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            problems.append(f"--connect {host}:{port}: cannot resolve {host!r}: "
                            f"{getattr(exc, 'strerror', None) or exc}")
            continue
        addresses[host] = info[0][4][0]
        usable.append((host, port))
    return usable, addresses, problems


def metrics_address(text: str) -> tuple[str, int]:
    """``PORT`` (on loopback) or ``HOST:PORT`` for ``--metrics``."""
    text = text.strip()
    if text.isdigit():
        return "127.0.0.1", port_number(text)
    return host_port(text)


def compiler_names(text: str) -> tuple[str, ...]:
    """``--compilers``: names (no paths, no blanks), or ``none``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    for name in names:
        if "/" in name or any(c.isspace() for c in name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a program name")
    if not names:
        raise argparse.ArgumentTypeError("no compiler named (say 'none' for none)")
    return names


def fit_connections(wanted: int, slots: int) -> int:
    """``--max-connections`` within this process's descriptor limit: the soft
    limit is raised towards the hard one if need be, and if that is not
    enough the cap is lowered (said on standard error), keeping room for
    jobs' pipes and files. Over the limit, ``accept`` fails instead."""
    need = wanted + 64 + 5 * slots
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(16, soft - 64 - 5 * slots)
        print(f"mesh_server.py: --max-connections {wanted} lowered to {fitted}: this process "
              f"may open {soft} files (ulimit -n)", file=sys.stderr)
        return fitted
    return wanted


def configure_logging(level: str, log_file: str | None, name: str) -> None:
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    # Every line stays one line whatever names and texts it quotes (a name
    # with a newline cannot forge a second entry).
    handler.setFormatter(VisibleFormatter(
        f"%(asctime)s {visible(name).replace('%', '%%')} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = merged_argv(sys.argv[1:] if argv is None else list(argv), parser)
    except ConfigError as exc:
        print(f"mesh_server.py: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.dead_after <= args.keepalive:
        build_parser().error(f"--dead-after ({args.dead_after:g}) must be longer than "
                             f"--keepalive ({args.keepalive:g})")
    if args.print_config:
        sys.stdout.write(render(args, parser))
        return 0
    try:
        tls, secret = credentials(args, TLS_FLAGS, tls_from_args)
    except StartupError as exc:
        print(f"mesh_server.py: {exc}", file=sys.stderr)
        return 2
    candidates, addresses, unresolved = resolve_candidates(args.connect)
    for problem in unresolved:
        print(f"mesh_server.py: {problem}" + ("; trying the others" if candidates else ""),
              file=sys.stderr)
    if unresolved and not candidates:
        return 2
    max_connections = fit_connections(args.max_connections, args.slots)
    config = ServerConfig(port=args.port, id=args.id, name=args.name, info=args.info,
                          host=args.host, connect=candidates[0] if candidates else None,
                          candidates=tuple(candidates[1:]), rejoin=not args.no_rejoin,
                          join_timeout=args.join_timeout, addresses=addresses,
                          limits=dataclasses.replace(DEFAULT_LIMITS, max_payload=args.max_frame),
                          max_send_buffer=args.max_send_buffer,
                          max_connections=max_connections,
                          registration_timeout=args.registration_timeout,
                          keepalive=args.keepalive, dead_after=args.dead_after, tls=tls,
                          secret=secret, plain_clients=args.plain_clients,
                          insecure_remote_jobs=args.insecure_remote_jobs)
    for flag, value in (("--work-dir", args.work_dir), ("--state-dir", args.state_dir)):
        problem = directory_problem(value) if value else None
        if problem:
            print(f"mesh_server.py: {flag} {value}: {problem}", file=sys.stderr)
            return 2
    try:
        configure_logging(args.log_level, args.log_file, config.name)
    except OSError as exc:
        print(f"mesh_server.py: cannot open --log-file {visible(args.log_file)}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    server = MeshServer(config)
    try:
        jobs = JobService(server, JobConfig(
            slots=args.slots, work_dir=Path(args.work_dir) if args.work_dir else None,
            load_interval=args.load_interval, max_runtime=args.max_runtime,
            max_output=args.max_output, max_file=args.max_file,
            max_jobs_per_client=args.max_jobs_per_client,
            state_dir=Path(args.state_dir) if args.state_dir else None,
            result_ttl=args.result_ttl, store_max=args.store_max,
            compilers=installed(args.compilers) if args.compilers is not None else None,
            cache_max=args.cache_max))
    except OSError as exc:
        where = args.state_dir or args.work_dir or "the temporary directory"
        print(f"mesh_server.py: cannot use {where} for job results and files: "
              f"{exc.filename or ''} {exc.strerror or exc}".rstrip(), file=sys.stderr)
        server.close()
        return 2
    logging.getLogger("crc.server").debug("%r ready", jobs)
    if args.metrics is not None:
        try:
            metrics = MetricsServer(server, args.metrics[0], args.metrics[1], jobs)
        except OSError as exc:
            server.close()
            print(f"mesh_server.py: cannot serve --metrics on {args.metrics[0]}:"
                  f"{args.metrics[1]}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        logging.getLogger("crc.server").info("%s: metrics at http://%s:%d/metrics",
                                             config.name, args.metrics[0], metrics.port)
    try:
        server.start()
    except OSError as exc:
        server.close()                  # nothing left behind (work directory, helper)
        logging.getLogger("crc.server").error("cannot listen on %s:%d: %s",
                                              config.host, config.port, exc.strerror or exc)
        print(f"mesh_server.py: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("crc.server").info("%s: %s received, shutting down", config.name,
                                             signal.Signals(signum).name)
        server.stop()

    # SIGHUP too (a closed terminal, a service manager's hang-up): a clean
    # stop with a log line, never a silent death that loses running jobs.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    keep_chunk_buffers()        # a relay passes file chunks of up to a megabyte
    server.run()
    logging.getLogger("crc.server").info("%s stopped", config.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
