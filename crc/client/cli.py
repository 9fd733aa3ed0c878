"""Command line of ``chat_client.py``: flags, wiring, signals, the run loop.

The only place in the client that touches process-wide state: standard
streams, signal handlers, the root logger and the terminal's settings (but
for the signal handlers batch mode sets while its loop runs). It
builds a ``ChatClient``, a view and a ``Session``, attaches one input source
(the keyboard thread, standard input read in the loop, or a script file),
and runs the client's event loop in the main thread until the session ends.

A command word after the flags (``rake``, ``run``, ``runall``) hands the
rest of the command line to batch mode (``crc.client.batch``) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import rich  # noqa: F401  (what shows things loads its parts later; a missing one is named now)

from .jobs.engine import JobClient
from ..visible import VisibleFormatter
from ..delivery import JournalError
from ..options import (OptionError, file_name, host_id, host_ports, info_text, listen_host,
                       seconds, seconds_or_zero, user_name)
from ..credentials import StartupError, credentials
from .core import ChatClient, ClientConfig

if TYPE_CHECKING:
    from ..net.tls import TLS
    from .session import Session
    from .tui import View

PROG = "chat_client.py"
#: The environment variable naming the mesh when --server is not given.
MESH_ENV = "CRC_MESH"
BATCH_COMMANDS = ("rake", "run", "runall", "monitor")
#: The client's name in batch mode when ``--name`` is not given.
BATCH_NAME = "batch"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Chat on a CRC Mesh (or any CRC v1) network. Interactive on a terminal; "
                    "otherwise runs the commands read from standard input or --script. "
                    "Type /help in the client for the commands. With rake, run or runall "
                    "after the flags, runs jobs instead (see: %(prog)s --server H:P run -h).")
    p.add_argument("--server", type=host_ports, metavar="HOST:PORT[,HOST:PORT...]",
                   help="the server to connect to; more, comma-separated, are tried in turn "
                   f"when the connection is lost (default: ${MESH_ENV}; for rake, the "
                   "Rakefile's HOSTS)")
    p.add_argument("--name", type=user_name, help="your user name (required to chat)")
    p.add_argument("--id", type=host_id, default=0, help="your 32-bit id (default: random)")
    p.add_argument("--info", type=info_text, default="", help="free text about you")
    p.add_argument("--script", type=file_name("--script"), metavar="FILE",
                   help="run the commands in FILE ('-': standard input) instead of the keyboard")
    p.add_argument("--connect-timeout", type=seconds, default=10.0, metavar="SECONDS",
                   help="give up if no server has welcomed us by then; with several --server "
                   "addresses each gets its share before the next is tried (default: 10)")
    p.add_argument("--keepalive", type=seconds, default=5.0, metavar="SECONDS",
                   help="ping the server after this many quiet seconds (default: 5)")
    p.add_argument("--dead-after", type=seconds, default=15.0, metavar="SECONDS",
                   help="take the server for gone (frozen, cut off) after this many seconds "
                   "without a byte from it, and reconnect (default: 15)")
    tls = p.add_argument_group("TLS (docs/security.md); for chat and batch mode alike")
    tls.add_argument("--tls-ca", type=file_name("--tls-ca"), metavar="FILE",
                     help="speak TLS; the server's certificate must be signed by this CA (PEM)")
    tls.add_argument("--tls-cert", type=file_name("--tls-cert"), metavar="FILE",
                     help="our certificate (PEM), for servers that ask for one")
    tls.add_argument("--tls-key", type=file_name("--tls-key"), metavar="FILE",
                     help="the private key of --tls-cert (PEM)")
    tls.add_argument("--tls-server-name", type=listen_host, metavar="NAME",
                     help="the name the server's certificate must carry (default: the host "
                     "of --server, a DNS name or an IP address)")
    p.add_argument("--secret-file", type=file_name("--secret-file"), metavar="FILE",
                   help="the mesh secret (docs/security.md): we prove it to the server and the "
                   "server to us; needed to run jobs on a mesh that has one")
    rel = p.add_argument_group("delivery (docs/protocol.md, \"Reliable chat\")")
    rel.add_argument("--state-dir", type=lambda text: Path(file_name("--state-dir")(text)),
                     metavar="DIR",
                     help="keep our id, unacknowledged chats and what we have received in DIR, "
                     "so a restarted client loses and repeats nothing")
    rel.add_argument("--reconnect-for", type=seconds_or_zero, default=0.0,
                     metavar="SECONDS", help="after losing the server, keep trying the --server "
                     "list this long (default 0: until /quit)")
    rel.add_argument("--no-reconnect", action="store_true",
                     help="end when the connection is lost (CRC v1 client behaviour)")
    rel.add_argument("--plain-chat", action="store_true",
                     help="send chats as plain CRC v1 (no acknowledgements, no resends)")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="diagnostics on standard error (default: WARNING)")
    p.add_argument("batch", nargs=argparse.REMAINDER, metavar="rake|run|runall ...",
                   help="run jobs on the mesh instead of chatting")
    return p


def read_script(parser: argparse.ArgumentParser, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        parser.error(f"cannot read script {path}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        parser.error(f"script {path} is not UTF-8: {exc}")


class ViewLogHandler(logging.Handler):
    """Log records as view lines, so they do not break the prompt."""

    def __init__(self, view: View) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.info(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(level: str, view: View) -> None:
    handler = ViewLogHandler(view)
    handler.setFormatter(VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def tolerate_unencodable_output() -> None:
    """A name or text the terminal's encoding cannot show must not crash the client."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


@contextlib.contextmanager
def terminal_restored(enabled: bool) -> Iterator[None]:
    """Put the terminal's settings back on exit, even if ``input()`` was still running."""
    saved: Any = None
    if enabled:
        try:
            import termios
            saved = termios.tcgetattr(sys.stdin.fileno())
        except (ImportError, OSError):
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            import termios
            with contextlib.suppress(OSError):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def install_signal_handlers(session: Session) -> None:
    """SIGINT, SIGTERM and SIGHUP (the terminal went away) all leave politely:
    jobs cancelled, goodbye said; a second one stops at once."""
    def on_signal(signum: int, _frame: object) -> None:
        session.loop.call_soon_threadsafe(session.interrupt, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def attach_input(session: Session, script_text: str | None, view: View) -> None:
    """Connect the one input source this run reads commands from."""
    from .inputs import Keyboard, PipeReader, feed_text
    from .tui import TerminalView
    if script_text is not None:
        feed_text(script_text, session.feed, session.feed_eof)
    elif isinstance(view, TerminalView):
        Keyboard(session.loop, view.read_line, lambda: session.prompt,
                 session.feed, session.feed_eof).start()
    elif sys.stdin is None:                  # closed before we started: no input
        session.feed_eof()
    else:
        reader = PipeReader(session.loop, sys.stdin.fileno(), session.feed, session.feed_eof)
        if not reader.start():
            feed_text(sys.stdin.read(), session.feed, session.feed_eof)


TLS_FLAGS = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")


def tls_from_args(args: argparse.Namespace) -> "TLS | None":
    """The client's TLS from its flags; None without ``--tls-ca``.
    ``TLSConfigError`` (naming the flag and the file) if it cannot be used."""
    from ..net.tls import TLSConfigError, client_tls
    if not args.tls_ca:
        for flag in ("tls_cert", "tls_key", "tls_server_name"):
            if getattr(args, flag):
                raise TLSConfigError(f"--{flag.replace('_', '-')} needs --tls-ca (the CA that "
                                     "signed the server's certificate)")
        return None
    return client_tls(args.tls_ca, args.tls_cert, args.tls_key,
                      server_name=args.tls_server_name)


def run_batch(parser: argparse.ArgumentParser, args: argparse.Namespace,
              tls: "TLS | None" = None, secret: bytes | None = None) -> int:
    command = args.batch[0]
    if command not in BATCH_COMMANDS:
        parser.error(f"unknown command {command!r} (expected one of {', '.join(BATCH_COMMANDS)})")
    for flag in ("--server", "--name", "--id"):
        if flag in args.batch[1:]:
            parser.error(f"{flag} goes before the command word: {PROG} {flag} ... {command} ...")
    for flag, given in (("--script", args.script), ("--state-dir", args.state_dir),
                        ("--plain-chat", args.plain_chat)):
        if given:
            parser.error(f"{flag} is for chat mode; {command} does not use it")
    if args.server is None and command != "rake":
        parser.error(f"--server is required (or set {MESH_ENV}=HOST:PORT[,HOST:PORT...])")
    from .batch import batch_main  # the jobs machinery is loaded only when used
    return batch_main(args.server, args.batch, args.name or BATCH_NAME, args.id, tls=tls,
                      secret=secret, reconnect=not args.no_reconnect, info=args.info,
                      reconnect_for=args.reconnect_for, liveness=liveness(args))


def resolvable(parser: argparse.ArgumentParser,
               servers: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The servers whose names resolve (each one that does not is said once);
    none: a bad command line, said now rather than after --connect-timeout."""
    usable = []
    for host, port in servers:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            print(f"{PROG}: --server {host}:{port}: cannot resolve {host!r}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            continue
        usable.append((host, port))
    if not usable:
        parser.exit(2)
    return usable


def liveness(args: argparse.Namespace) -> dict[str, float]:
    """The client's deadlines from its flags (``ClientConfig`` fields)."""
    return {"handshake_timeout": args.connect_timeout, "keepalive": args.keepalive,
            "dead_after": args.dead_after}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server is None and os.environ.get(MESH_ENV, "").strip():
        try:
            args.server = host_ports(os.environ[MESH_ENV].strip())
        except OptionError as exc:
            parser.error(f"${MESH_ENV}: {exc}")
    if args.server is not None:
        args.server = resolvable(parser, args.server)
    if args.no_reconnect and args.reconnect_for:
        parser.error("--no-reconnect and --reconnect-for contradict each other")
    if args.dead_after <= args.keepalive:
        parser.error(f"--dead-after ({args.dead_after:g}) must be longer than --keepalive "
                     f"({args.keepalive:g})")
    try:
        tls, secret = credentials(args, TLS_FLAGS, tls_from_args)
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.batch:
        return run_batch(parser, args, tls, secret)
    if args.server is None:
        parser.error(f"--server is required (or set {MESH_ENV}=HOST:PORT[,HOST:PORT...])")
    if args.name is None:
        parser.error("the following arguments are required to chat: --name")
    script_text = (read_script(parser, args.script)
                   if args.script is not None and args.script != "-" else None)
    interactive = args.script is None and sys.stdin is not None and sys.stdin.isatty() \
        and sys.stdout is not None
    # (The chat's own modules: a batch command above never loads them.)
    from .job_commands import JobCommands
    from .session import Session
    from .tui import LineView, TerminalView
    tolerate_unencodable_output()
    view: View = TerminalView() if interactive else LineView()
    configure_logging(args.log_level, view)
    try:
        client = ChatClient(ClientConfig(
            server=args.server[0], servers=tuple(args.server[1:]), name=args.name, id=args.id,
            info=args.info, tls=tls, secret=secret, reconnect=not args.no_reconnect,
            reconnect_for=args.reconnect_for, reliable=not args.plain_chat,
            state_dir=args.state_dir, **liveness(args)))
    except JournalError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.id and client.id != args.id:
        print(f"{PROG}: --id {args.id} differs from the id {client.id} kept in "
              f"{args.state_dir}/identity.json", file=sys.stderr)
        return 2
    session = Session(client, view, script=not interactive,
                      connect_timeout=args.connect_timeout)
    session.jobs = JobCommands(session, JobClient(client, Path.cwd()))
    if isinstance(view, LineView):
        view.on_closed = session.output_closed
    with terminal_restored(interactive):
        try:
            install_signal_handlers(session)
            if session.start():
                attach_input(session, script_text, view)
                client.loop.run()
        finally:
            if isinstance(view, TerminalView):
                view.close()
            client.close()
    return session.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
