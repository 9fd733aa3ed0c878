"""The meshcc agent: one mesh connection shared by every compile of a build.

A build starts one meshcc per compile; each would otherwise load the mesh
client, connect, authenticate, register (a join and a quit seen by every
chat participant) and leave. Instead the first meshcc starts this agent in
the background, and every meshcc hands it its compile over a Unix socket in
a directory only its user can enter. The agent keeps one ``ChatClient`` and
``JobClient`` on one event loop, submits each compile as a job, writes the
object into the compile's work directory and answers with one message.
The mesh is named by the environment the agent was started with; agents for
different meshes (or credentials) have different sockets.

It leaves by itself after ``IDLE`` seconds without a request. If the mesh
cannot be reached, or the environment names it or its credentials wrongly,
it answers every request at once with why, for
``DOWN_FOR`` seconds (so a build against a dead mesh falls back quickly),
then leaves; the next compile starts a new agent that tries again.

Requests (``crc.cc.talk``: one message each way, one per connection):
``{argv, source, work, compiler, debug_dir, timeout, cache}`` →
``{ok: True, exit, printed, cached, server}`` or ``{ok: False, error}``;
``{ship: True, ...}`` (``crc.cc.wrapper.ship_request``) likewise, or
``{ok: False, preprocess: why}``; and a whole invocation from the native
front (``crc.cc.front``), in ``talk``'s second form.

Client side: a program of its own (``python -m crc.cc.agent SOCKET``),
started by ``crc.cc.wrapper``; prints nothing.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from typing import Any, Callable

from ..client.core import ChatClient, ClientConfig
from ..client.jobs.engine import JobClient
from ..client.jobs.state import JobError
from ..jobs.compilers import ROOT_DIR, CompilerError, identity
from ..jobs.files import FileRef
from ..net.loop import EVENT_READ, EventLoop, accept_pending
from ..options import OptionError, host_ports
from ..protocol import StatusCode
from ..routing import QUIET_INFO
from .compiler import MeshFailure
from .includes import Scanner, Unscannable
from .ship import DEPS, NotShipped, Probe, parse_probe, plan_shipment, probe_flags, \
    rewrite_deps
from .paths import LOCK_ENV, agent_dir, pid_file
from .front import Front, WorkDirs
from .talk import THIN, TalkError, decode, decode_fields, encode, encode_fields

#: Seconds without a request after which the agent leaves (``MESHCC_AGENT_IDLE``):
#: long enough that the next build of a working session finds it running
#: (its start — an interpreter, the mesh client's modules, a handshake — is
#: otherwise paid by every build's first compiles, with the CPUs idle).
IDLE = 600.0
#: Seconds an agent that cannot reach the mesh keeps saying so before leaving.
DOWN_FOR = 10.0
ENV_SECRET = "CRC_MESH_SECRET_FILE"
ENV_TLS = {"ca": "CRC_MESH_TLS_CA", "cert": "CRC_MESH_TLS_CERT", "key": "CRC_MESH_TLS_KEY",
           "server_name": "CRC_MESH_TLS_SERVER_NAME"}


def credentials() -> tuple[Any, bytes | None]:
    """TLS and the secret the environment names; ``MeshFailure`` if unusable."""
    from ..protocol.auth import SecretError, load_secret
    secret = None
    path = os.environ.get(ENV_SECRET, "").strip()
    if path:
        try:
            secret = load_secret(path)
        except SecretError as exc:
            raise MeshFailure(f"${ENV_SECRET}: {exc}") from None
    tls = None
    given = {k: os.environ.get(v, "").strip() or None for k, v in ENV_TLS.items()}
    if given["ca"]:
        from ..net.tls import TLSConfigError, client_tls
        try:
            tls = client_tls(given["ca"], given["cert"], given["key"],
                             server_name=given["server_name"])
        except TLSConfigError as exc:
            raise MeshFailure(f"TLS: {exc}") from None
    return tls, secret


class Request:
    """One meshcc's connection: read its line, answer once, close."""

    def __init__(self, agent: "Agent", sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock
        self.data = bytearray()
        self.answered = False
        sock.setblocking(False)
        agent.loop.register(sock, EVENT_READ, self)

    def handle_event(self, mask: int) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()          # meshcc went away (killed by make?): nothing to answer
            return
        self.data += chunk
        if self.data[:len(THIN)] == THIN[:len(self.data)]:
            self._thin()
            return
        try:
            request, _ = decode(self.data)
            if request is not None:
                problem = request_problem(request)
                if problem:
                    raise TalkError(problem)
        except TalkError as exc:
            self.answer({"ok": False, "error": f"bad request: {exc}"})
            return
        if request is not None:
            self.agent.loop.unregister(self.sock)
            self.agent.compile(self, request)

    def _thin(self) -> None:
        """A request of the native front (``crc.cc.front``)."""
        try:
            fields, _ = decode_fields(self.data, THIN)
        except TalkError:
            self.send(["python", ""])        # (meshcc itself will say what is wrong)
            return
        if fields is None:
            return
        self.agent.loop.unregister(self.sock)
        try:
            front = Front(self.agent, self, fields)
        except (ValueError, IndexError):
            self.send(["python", ""])
            return
        front.start()

    def answer(self, reply: dict[str, Any]) -> None:
        self._reply(encode(reply))

    def waiting(self) -> bool:
        """Whether whoever asked is still there for the answer."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def send(self, fields: list[str]) -> None:
        """Answer the native front (``crc.cc.front``)."""
        self._reply(encode_fields(fields))

    def _reply(self, data: bytes) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5.0)        # a line to a local peer; it is waiting for it
            self.sock.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.agent.loop.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


def request_problem(request: dict) -> str | None:
    """What is wrong with a request, if anything."""
    for key in ("words",) if request.get("ship") else ("argv",):
        argv = request.get(key)
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return f"{key!r} is not a list of strings"
    keys = ("source", "work", "real", "cwd", "output", "language", "name") \
        if request.get("ship") else ("source", "work", "compiler")
    for key in keys:
        if not isinstance(request.get(key), str) or not request[key]:
            return f"{key!r} is not a string"
    if request.get("debug_dir") is not None and not isinstance(request["debug_dir"], str):
        return "'debug_dir' is not a string"
    timeout = request.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        return "'timeout' is not a positive number"
    return None


class Listener:
    def __init__(self, agent: "Agent", sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock

    def handle_event(self, mask: int) -> None:
        for conn in accept_pending(self.sock, self.agent.loop, self):
            self.agent.touched()
            Request(self.agent, conn)


class Agent:
    def __init__(self, path: str) -> None:
        self.path = path
        self.loop = EventLoop()
        self.down: str | None = None        # why the mesh cannot be reached
        self.ready = False
        #: Compiles ready to go once the mesh is: (request, submit).
        self.waiting: list[tuple[Request, Callable[[], None]]] = []
        self.active = 0
        #: Native fronts' invocations with a work directory out (``crc.cc.front``).
        self.fronts: set = set()
        self.workdirs = WorkDirs(lambda: bool(self.fronts))
        self._idle_timer = None
        try:
            self.idle = float(os.environ.get("MESHCC_AGENT_IDLE", "") or IDLE)
        except ValueError:
            self.idle = IDLE
        self.client: ChatClient | None = None
        self.jobs: JobClient | None = None
        self.scanner = Scanner()
        self.probes: dict[tuple, Probe] = {}
        self.identities: dict[str, tuple[tuple, str]] = {}
        try:
            tls, self.secret = credentials()
            servers = host_ports(os.environ.get("CRC_MESH", ""))
        except OptionError as exc:
            self.setting = f"$CRC_MESH: {exc}"
        except MeshFailure as exc:
            self.setting = str(exc)
        else:
            self.setting = None
            self.client = ChatClient(ClientConfig(
                servers[0], "meshcc", 0, QUIET_INFO, tls=tls, secret=self.secret,
                servers=tuple(servers[1:]), handshake_timeout=5.0),
                self.loop, listener=self._on_client)
            self.jobs = JobClient(self.client, agent_dir())

    # -- life ------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.loop.register(sock, EVENT_READ, Listener(self, sock))
        if self.client is None:             # nothing to connect with: say why, then go
            self._down(self.setting or "no mesh")
        else:
            try:
                self.client.start()
            except OSError as exc:
                self._down(f"cannot connect: {exc.strerror or exc}")
        self.touched()
        try:
            self.loop.run()
        finally:
            for front in list(self.fronts):
                front.forget_work()
            self.workdirs.drain()
            for leftover in (self.path, pid_file(self.path)):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            if self.client is not None and self.jobs is not None:
                self.jobs.close()
                self.client.close()

    def touched(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(self.idle, self._idle)

    def _idle(self) -> None:
        if self.active:
            self.touched()
            return
        if self.client is not None:
            self.client.finish()
        self.loop.call_later(0.5, self.loop.stop)

    def _down(self, why: str, linger: float = DOWN_FOR) -> None:
        """The mesh cannot be reached: say so to whoever asks for ``linger``
        seconds, then leave (the next compile starts an agent that tries again)."""
        if self.down is None:
            self.down = why
            self.loop.call_later(linger, self.loop.stop)
        for request, _ in self.waiting:
            request.answer({"ok": False, "error": why})
        self.waiting.clear()

    def _on_client(self, kind: str, data: dict) -> None:
        if kind == "extensions" and not self.ready:
            if self.secret is not None and not self.client.server_verified:
                self._down("the server did not prove it knows the mesh secret")
                return
            self.ready = True
            waiting, self.waiting = self.waiting, []
            for _, submit in waiting:
                submit()
        elif kind == "plain":
            self._down("the server is a plain CRC v1 server; it cannot run jobs")
        elif kind == "status" and not self.ready and \
                data.get("code") in (StatusCode.AUTH_REFUSED, StatusCode.DUPLICATE_ID):
            self._down(f"the server refused us: {data.get('text')}")
        elif kind == "disconnected":
            # Lost after it worked (a server restarting?): leave at once, so
            # that the next compile's agent connects afresh.
            linger = 0.2 if self.ready else DOWN_FOR
            self.ready = False
            self._down(f"connection lost: {data.get('reason')}", linger)

    # -- compiles ----------------------------------------------------------------------

    def compile(self, request: Request, body: dict) -> None:
        self.touched()
        if self.down is not None:
            request.answer({"ok": False, "error": self.down})
            return
        # What can be done without the mesh (identify the compiler, find the
        # headers) is done now: while a new agent's handshake is in flight.
        submit = self._prepare_ship(request, body) if body.get("ship") else \
            lambda: self._run(request, request.answer, argv=body["argv"],
                              files=[body["source"]], compiler=body.get("compiler"),
                              debug_dir=body.get("debug_dir"), base_dir=body["work"],
                              scratch=True,
                              cache=body.get("cache") is True, timeout=body.get("timeout"))
        if submit is None:
            return                              # (answered already)
        if not self.ready:
            self.waiting.append((request, submit))
        else:
            submit()

    def _run(self, request: Request, done: Callable[[dict], None], **submit: Any) -> None:
        """Submit a compile; answer ``request`` with why if it fails, else hand
        ``done`` the answer of a run that ended (``exit``, ``printed``,
        ``cached``, ``server``)."""
        assert self.jobs is not None
        self.active += 1
        printed = [False]

        def on_run(job: Any, run: Any, event: str, data: Any) -> None:
            if event == "output":
                printed[0] = True
            elif event in ("done", "failed"):
                self.active -= 1
                self.touched()
                if event == "failed" or run.error:
                    error = run.error or "the job failed"
                    if error.startswith("timed out"):
                        error += " (MESHCC_TIMEOUT)"
                    request.answer({"ok": False, "error": error})
                    return
                done({"ok": True, "exit": run.exit, "printed": printed[0], "cached": run.cached,
                      "server": run.name if run.name != "?" else str(run.server)})

        try:
            self.jobs.submit(listener=on_run, **submit)
        except (JobError, KeyError, TypeError, OSError) as exc:
            self.active -= 1
            request.answer({"ok": False, "error": f"cannot submit: {exc}"})

    # -- compiles shipped as source (crc.cc.ship) ---------------------------------------

    def _identity(self, real: str) -> str:
        """The compiler's id (``crc.jobs.compilers``), remembered while its
        driver's stat stays the same (its cache file checks the rest)."""
        try:
            st = os.stat(real)
        except OSError as exc:
            raise MeshFailure(f"cannot identify the compiler: {real}: "
                              f"{exc.strerror or exc}") from None
        stamp = (st.st_size, st.st_ino, st.st_mtime_ns)
        known = self.identities.get(real)
        if known is None or known[0] != stamp:
            try:
                known = self.identities[real] = (stamp, identity(real)["id"])
            except CompilerError as exc:
                raise MeshFailure(f"cannot identify the compiler: {exc}") from None
        return known[1]

    def _probe(self, real: str, flags: list[str]) -> Probe:
        """The compiler's own include directories and preincludes for these
        flags: asked of it once per flag set for the agent's life (a run of
        ``COMPILER -E -M -v /dev/null``, some milliseconds)."""
        key = (real, *flags)
        known = self.probes.get(key)
        if known is None:
            try:
                done = subprocess.run([real, *flags, "-E", "-M", "-v", os.devnull],
                                      capture_output=True, text=True, timeout=30,
                                      stdin=subprocess.DEVNULL, errors="surrogateescape")
            except (OSError, subprocess.SubprocessError) as exc:
                raise NotShipped(f"cannot ask {real} for its include directories: {exc}") \
                    from None
            if done.returncode != 0:
                raise NotShipped(f"{real} -v failed (exit {done.returncode})")
            known = self.probes[key] = parse_probe(done.stderr, done.stdout)
        return known

    def _prepare_ship(self, request: Request, body: dict) -> Callable[[], None] | None:
        """What sends the source and its headers (the compile runs from
        source over there); None, the request answered, when it cannot be
        shipped (``{ok: False, preprocess: why}``) or the compiler is unknown."""
        cwd = body["cwd"]
        try:
            compiler = self._identity(body["real"])
        except MeshFailure as exc:
            request.answer({"ok": False, "error": str(exc)})
            return None
        try:
            probe = self._probe(body["real"], probe_flags(body["words"], body["language"]))
            plan = plan_shipment(body["words"], cwd, body["output"], body["source"], probe)
            closure = self.scanner.closure(cwd, body["source"], plan.search, plan.preincludes)
        except (NotShipped, Unscannable) as exc:
            request.answer({"ok": False, "preprocess": str(exc)})
            return None
        prepared, names = [], set()
        for f in closure:
            name = ROOT_DIR + f.path
            if name not in names:
                names.add(name)
                prepared.append((FileRef(name, f.info.sha, f.info.size, f.info.mode), f.path))
        timed = next((f.info.timed for f in closure if f.info.timed), None)
        cache = body.get("cache") is True and timed is None
        work = body["work"]

        def done(answer: dict) -> None:
            # What was read, as the compile was sent: the local cache records
            # these digests and stamps (not the files as they may be by now).
            answer.update(not_cached=timed and f"uses {timed}", read=[f.name for f in closure],
                          read_info=[[f.info.sha, *f.info.stamp] for f in closure])
            if answer["exit"] == 0 and not answer["printed"]:
                problem = self._shipped_back(work, cwd, plan, closure)
                if problem:
                    answer = {"ok": False, "preprocess": problem}
            request.answer(answer)

        return lambda: self._run(request, done, argv=[body["name"], *plan.argv],
                                 prepared=prepared, rooted=cwd, compiler=compiler,
                                 base_dir=work, cache=cache, timeout=body.get("timeout"),
                                 scratch=True)

    @staticmethod
    def _shipped_back(work: str, cwd: str, plan: Any, closure: list) -> str | None:
        """Put the dependency file that came back (rewritten) where the
        compiler would have written it; meshcc takes the object from its work
        directory (``OUTPUT`` is its ``REMOTE_OUTPUT``). Why not, if it cannot."""
        try:
            if plan.depfile is not None:
                with open(os.path.join(work, DEPS), encoding="utf-8",
                          errors="surrogateescape") as f:
                    text = rewrite_deps(f.read(), cwd, plan.prefix, closure)
                if text is None:
                    return "the dependency file could not be written as here"
                target = os.path.join(cwd, plan.depfile)
                temporary = f"{target}.meshcc-{os.getpid()}"
                with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(text)
                os.replace(temporary, target)
        except OSError as exc:
            return f"the results could not be put in place: {exc.strerror or exc}"
        return None


def bind(path: str) -> tuple[socket.socket, int] | None:
    """The agent's listening socket and its lock; None if another agent has them."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.stat(folder).st_uid != os.getuid():
        raise MeshFailure(f"{folder} belongs to someone else")
    os.chmod(folder, 0o700)
    # The meshcc that started us took the lock for us (``LOCK_ENV``: the same
    # open file, so taking it again here succeeds); else we take it.
    given = os.environ.pop(LOCK_ENV, "")
    lock = int(given) if given.isdigit() else os.open(path + ".lock", os.O_RDWR | os.O_CREAT,
                                                      0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None
    except OSError:                   # (a descriptor that is not the lock)
        return None
    try:
        os.unlink(path)               # a dead agent's socket
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    with open(pid_file(path), "w") as f:
        f.write(f"{os.getpid()}\n")
    return sock, lock


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m crc.cc.agent SOCKET", file=sys.stderr)
        return 2
    path = argv[0]
    try:
        bound = bind(path)
    except (OSError, MeshFailure):
        return 1
    if bound is None:
        return 0                      # another agent serves this mesh
    sock, _lock = bound
    Agent(path).serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
