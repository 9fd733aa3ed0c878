"""One meshcc invocation, from command line to object file.

1. ``args.plan`` decides: anything but one C/C++ source compiled into one
   object runs here, exactly as the real compiler (we ``exec`` it, holding a
   local slot). So does everything when ``CRC_MESH`` is not set.
2. The local cache (``direct``) may have the object already: then nothing
   else happens.
3. The source is preprocessed here (``source``), with the dependency file
   written as the local compile would write it.
4. The preprocessed text goes to the mesh — through the agent
   (``agent``, reached by ``talk``) — as a job naming the compiler by its
   content (``crc.jobs.compilers``): only a server with the same compiler
   takes it (or its cache answers); the object comes back and is moved into
   place, and the local cache records it.
5. A compile that printed anything there (warnings, errors) is compiled
   again here, so what the user reads is the local compiler's own text
   (caret lines and notes need the original files); a clean compile's
   object is the mesh's. A failure of the mesh itself (unreachable,
   refused, no such compiler, a server lost, a timeout) compiles here with
   one line on standard error saying why — or, with ``MESHCC_FALLBACK=0``,
   fails with that line.

Environment: ``CRC_MESH`` (HOST:PORT[,HOST:PORT...]), ``CRC_MESH_SECRET_FILE``,
``CRC_MESH_TLS_CA`` / ``_CERT`` / ``_KEY`` (as ``chat_client.py``'s flags),
``MESHCC_FALLBACK``, ``MESHCC_VERBOSE``, ``MESHCC_TIMEOUT`` (seconds a
remote compile may take, default 600), ``MESHCC_CONNECT_TIMEOUT`` (default 5).

Client side: never talks to the mesh itself, only to its agent; prints
only the compiler's output and its own one-line notes on standard error.
"""

from __future__ import annotations

import os
import sys
import time

from .args import Local, Remote, expand_responses, plan
from .compiler import MeshFailure, UsageError, invocation, local_slot

# Everything here runs once per compile of a build: it imports nothing the
# path does not use (no re, json, subprocess, pathlib, tempfile: each costs
# milliseconds); the agent, which lives for the whole build, does the rest.

PROG = "meshcc"
#: What the remote compile writes its object to, in the job's directory.
REMOTE_OUTPUT = "meshcc-out.o"


class CompileHere(Exception):
    """Compile this one here after all (the reason is said with MESHCC_VERBOSE);
    ``slot``, a local slot already taken for it."""

    def __init__(self, why: str, slot: int | None = None) -> None:
        super().__init__(why)
        self.slot = slot


class Verbose:
    """``MESHCC_VERBOSE=1``: where each compile ran, and each step's time.
    Also how the invocation's one-line notes reach the user: ``out`` takes a
    line (standard error here; the agent collects them for a thin front)."""

    def __init__(self, on: bool, out=None) -> None:
        self.on = on
        self.out = out or _to_stderr
        self.start = time.monotonic()
        self.steps: list[str] = []

    def step(self, what: str) -> None:
        if self.on:
            self.steps.append(f"{what} {1000 * (time.monotonic() - self.start):.1f} ms")

    def say(self, text: str) -> None:
        if self.on:
            steps = f" ({', '.join(self.steps)})" if self.steps else ""
            self.out(f"{PROG}: {text}{steps}")

    def note(self, text: str) -> None:
        """A line the user sees whatever ``MESHCC_VERBOSE`` says."""
        self.out(f"{PROG}: {text}")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "no", "false", "off")


def seconds(name: str, default: float) -> float:
    """``$name`` as the project reads seconds (``crc.options.seconds``: loaded
    only when the variable is set, to keep it off every compile's path)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    from ..options import OptionError, seconds as parse
    try:
        return parse(text)
    except OptionError as exc:
        raise UsageError(f"${name}: {exc}") from None


class Here:
    """Run the real compiler here, as it is (``why``: said with MESHCC_VERBOSE)."""

    __slots__ = ("real", "args", "why", "slot")

    def __init__(self, real: str, args: list[str], why: str, slot: int | None = None) -> None:
        self.real, self.args, self.why, self.slot = real, args, why, slot


class Compile:
    """An invocation the mesh may run: what ``plan`` made of it, the real
    compiler, and the settings it runs with; the local cache's key once
    looked up (``look_up``)."""

    __slots__ = ("what", "real", "args", "words", "connect_timeout", "timeout", "fallback",
                 "local", "key", "flags")

    def __init__(self, what: Remote, real: str, args: list[str], words: list[str],
                 connect_timeout: float, timeout: float, fallback: bool) -> None:
        self.what, self.real, self.args, self.words = what, real, args, words
        self.connect_timeout, self.timeout, self.fallback = connect_timeout, timeout, fallback
        self.local = self.key = None
        self.flags: bool | str = "MESHCC_CACHE=0"


def begin(argv: list[str], me: str, verbose: Verbose) -> "int | Here | Compile":
    """What an invocation (``argv``: meshcc's own, ``me``: meshcc's real path)
    is: an exit status if it ends at once (a usage error, said), ``Here``,
    or a ``Compile`` for the mesh. Reads the environment and the working
    directory: the invocation's (``crc.cc.front`` sees to that in the agent)."""
    try:
        name, real, args = invocation(argv, me)
        connect_timeout = seconds("MESHCC_CONNECT_TIMEOUT", 5.0)
        timeout = seconds("MESHCC_TIMEOUT", 600.0)
    except UsageError as exc:
        verbose.note(str(exc))
        return 2
    mesh = os.environ.get("CRC_MESH", "").strip()
    expanded = expand_responses(args)
    words = expanded if expanded is not None else args     # (as the compiler reads them)
    what = plan([name, *words])
    if isinstance(what, Local):
        return Here(real, args, what.reason)
    if not mesh:
        return Here(real, args, "CRC_MESH is not set")
    return Compile(what, real, args, words, connect_timeout, timeout,
                   flag("MESHCC_FALLBACK", True))


def failed(job: Compile, exc: Exception, verbose: Verbose) -> "int | Here":
    """After ``CompileHere`` or ``MeshFailure``: compile here (with a note
    if the mesh failed), or, with ``MESHCC_FALLBACK=0``, fail with one."""
    if isinstance(exc, MeshFailure):
        if not job.fallback:
            verbose.note(f"{job.what.source}: the mesh could not compile it: {exc} "
                         "(MESHCC_FALLBACK=0: not compiling here)")
            return 1
        verbose.note(f"{job.what.source}: compiling here: {exc}")
    return Here(job.real, job.args, str(exc), getattr(exc, "slot", None))


def run_locally(here: Here, verbose: Verbose) -> int:
    """Become the real compiler (its output, its exit status), in a local slot."""
    if here.slot is None:
        local_slot()
    verbose.say(f"compiling here: {here.why}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(here.real, [here.real, *here.args])
    except OSError as exc:
        verbose.note(f"cannot run {here.real}: {exc.strerror or exc}")
        return 127


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if argv[1:2] == ["--launcher"]:
        from .launcher import command
        return command(argv[2:])
    verbose = Verbose(flag("MESHCC_VERBOSE", False))
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    job = begin(argv, me, verbose)
    if isinstance(job, int):
        return job
    if isinstance(job, Compile):
        try:
            return compile_on_mesh(job, verbose)
        except (CompileHere, MeshFailure) as exc:
            job = failed(job, exc, verbose)
            if isinstance(job, int):
                return job
    return run_locally(job, verbose)


def look_up(job: Compile, verbose: Verbose) -> bool:
    """True if the local cache put the object in place; else notes its key
    (and whether the mesh's cache may answer) in ``job``."""
    if not flag("MESHCC_CACHE", True):
        return False
    from .direct import DirectCache, direct_key
    job.local = DirectCache()
    job.key = direct_key(job.real, job.words, job.what.source)
    if job.key is not None and job.local.lookup(job.key, job.what.output, job.what.depfile):
        verbose.step("found")
        verbose.say(f"{job.what.source} from the local compile cache")
        return True
    verbose.step("looked up")
    job.flags = cache_flags(job.what)
    return False


def ship_request(job: Compile, work: str) -> dict:
    """The agent's request to ship the source and its headers (``crc.cc.ship``;
    it identifies the compiler too, once per change of it)."""
    what = job.what
    return {"ship": True, "words": job.words, "cwd": os.getcwd(), "source": what.source,
            "output": what.output, "language": what.language, "name": what.compiler,
            "real": job.real, "work": work, "timeout": job.timeout, "cache": job.flags is True}


def shipped(job: Compile, result: dict, work: str, verbose: Verbose) -> int | None:
    """The agent's answer to ``ship_request``: 0 once the object is in place;
    None if it must be preprocessed here instead (it says why);
    ``CompileHere`` or ``MeshFailure`` if not."""
    if result.get("preprocess"):
        verbose.step(f"preprocessing here: {result['preprocess']}")
        return None
    if not result.get("ok"):
        raise MeshFailure(str(result.get("error") or "the mesh could not run the compile"))
    if job.flags is not True or result.get("not_cached"):
        verbose.step(f"not cached: {result.get('not_cached') or job.flags}")
    verbose.step("compiled")
    return finish(job.what, result, work, job.local, job.key, result.get("read"), verbose,
                  job.flags is True and not result.get("not_cached"), result.get("read_info"))


def here_while_starting(job: Compile) -> None:
    """Another meshcc has started the agent and it does not answer yet
    (``talk.ask`` waits for it): ``CompileHere`` if a local slot is free now
    — the CPUs would idle while it starts — unless ``MESHCC_FALLBACK=0``.
    (The meshcc that starts it waits, and says what the agent says: a mesh
    that is down or a wrong setting is noted by a build's first compile.)"""
    if job.fallback:
        slot = local_slot(wait=False)
        if slot is not None:
            raise CompileHere("the meshcc agent is starting", slot)


def compile_on_mesh(job: Compile, verbose: Verbose) -> int:
    """0 once the object is in place; ``CompileHere`` or ``MeshFailure`` if not."""
    what, real = job.what, job.real
    if look_up(job, verbose):
        return 0
    local, key, flags = job.local, job.key, job.flags
    work = make_work_dir(what.output)
    try:
        if flag("MESHCC_SHIP", True):
            verbose.step("shipping")
            from .paths import socket_path
            from .talk import ask
            result = ask(socket_path(), ship_request(job, work), job.connect_timeout,
                         job.connect_timeout + job.timeout + 10.0, start_agent,
                         lambda: here_while_starting(job))
            done = shipped(job, result, work, verbose)
            if done is not None:
                return done
        from ..jobs.compilers import CompilerError, identity
        from .source import files_read, remote_name, strip_builtins
        try:
            compiler = identity(real)["id"]
        except CompilerError as exc:
            raise MeshFailure(f"cannot identify the compiler: {exc}") from None
        verbose.step("identified")
        name = remote_name(what.source)
        if what.debug and name != what.source:
            # The debug information records the source's path as given; a job
            # directory can hold it only under a name of its own.
            raise CompileHere("-g with the source outside the working directory, "
                              "preprocessed (MESHCC_SHIP=0 or not shippable)")
        target = os.path.join(work, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        errors = os.path.join(work, ".stderr")
        slot = local_slot()
        try:
            status = spawn_wait([real, *what.preprocess], stdout=target, stderr=errors)
        finally:
            if slot is not None:
                os.close(slot)
        verbose.step("preprocessed")
        if status != 0 or os.path.getsize(errors):
            # An error or a warning while preprocessing: the local compile
            # says it exactly as it would have (and fails if it must).
            raise CompileHere("the preprocessor had something to say")
        with open(target, "rb") as f:
            text = f.read()
        if what.debug:
            # With -g the object records the compile's options: it must be
            # compiled as plain source (re-preprocessed there), built-ins
            # left to that compiler. Without, -fpreprocessed skips that
            # second pass (about 5 % of a compile) and keeps the built-ins.
            text = strip_builtins(text)
            with open(target, "wb") as f:
                f.write(text)
            argv = [what.compiler, *what.compile, name, "-o", REMOTE_OUTPUT]
        else:
            argv = [what.compiler, *what.compile, "-fpreprocessed", "-fdirectives-only", name,
                    "-o", REMOTE_OUTPUT]
        cache = time_macro(text) or flags
        if cache is not True:
            verbose.step(f"not cached: {cache}")
        verbose.step("sending")             # (+ the interpreter's start: exec to first byte)
        result = submit(argv, name, work, compiler, os.getcwd() if what.debug else None,
                        job.connect_timeout, job.timeout, cache is True,
                        lambda: here_while_starting(job))
        verbose.step("compiled")
        return finish(what, result, work, local, key, None if cache is not True
                      else files_read(text), verbose, cache is True)
    finally:
        remove_tree(work)


def finish(what: Remote, result: dict, work: str, local: "DirectCache | None",  # noqa: F821
           key: str | None, read: list[str] | None, verbose: Verbose, record: bool,
           read_info: list | None = None) -> int:
    """The mesh's answer to a compile: the object moved into place (and the
    local cache told), or ``CompileHere`` / ``MeshFailure``."""
    if result.get("exit") != 0 or result.get("printed"):
        raise CompileHere(f"the compile on {result.get('server')} printed diagnostics")
    produced = os.path.join(work, REMOTE_OUTPUT)
    if not os.path.isfile(produced):
        raise MeshFailure(f"{result.get('server')} returned no object file")
    try:
        os.replace(produced, what.output)
    except OSError as exc:                  # (the compiler here will say what is wrong)
        raise CompileHere(f"cannot put the object in place: {exc.strerror or exc}") from None
    if record and local is not None and key is not None and read is not None:
        local.record(key, read, what.output, what.depfile, read_info)
        verbose.step("recorded")
    if result.get("cached"):
        verbose.say(f"{what.source} from the compile cache on {result.get('server')}")
    else:
        verbose.say(f"{what.source} compiled on {result.get('server')}")
    return 0


#: Macros whose value is the moment of the compile: a source using them is
#: never taken from the cache (in directives-only text they are still there
#: to be seen, in the source and in every header).
TIME_MACROS = (b"__DATE__", b"__TIME__", b"__TIMESTAMP__")


def time_macro(text: bytes) -> str | None:
    """Why ``text`` may not be answered from a cache, if it uses the time."""
    for macro in TIME_MACROS:
        if macro in text:
            return f"uses {macro.decode()}"
    return None


def cache_flags(what: Remote) -> bool | str:
    """True if this command line may be answered from the compile cache, else why not."""
    for word in what.compile:
        if word.startswith(("-flto", "-fprofile", "-frandom-seed")):
            return f"{word} (output not reproducible)"
    return True


def make_work_dir(output: str) -> str:
    """A fresh directory beside ``output`` (so the object moves into place by
    renaming), or in the temporary directory if that one is not there."""
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        folder = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(100):
        path = os.path.abspath(os.path.join(folder, f".meshcc-{os.urandom(6).hex()}"))
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise MeshFailure(f"cannot make a work directory in {folder}")


def remove_tree(path: str) -> None:
    """Remove ``path`` and what is in it (a work directory: usually a file or
    two at its top, removed without walking it)."""
    try:
        for name in os.listdir(path):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass                               # (a directory in it, say: walk it)
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def spawn_wait(argv: list[str], *, stdout: str, stderr: str) -> int:
    """Run ``argv`` with its output into files; its exit status."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, stdout, flags, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, stderr, flags, 0o600)])
    except OSError as exc:
        raise MeshFailure(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def submit(argv: list[str], source: str, work: str, compiler: str, debug_dir: str | None,
           connect_timeout: float, timeout: float, cache: bool = False,
           meanwhile: "Callable[[], None] | None" = None) -> dict:  # noqa: F821
    """Have the agent (``crc.cc.agent``, started if none is running) run
    ``argv`` on the mesh with ``source`` from ``work``; the object lands in
    ``work``. Its answer: ``exit``, ``printed`` (anything on stdout or
    stderr) and ``server``. ``meanwhile``: as ``talk.ask`` takes it."""
    from .paths import socket_path
    from .talk import ask
    request = {"argv": argv, "source": source, "work": work, "compiler": compiler,
               "debug_dir": debug_dir, "timeout": timeout, "cache": cache}
    reply = ask(socket_path(), request, connect_timeout, connect_timeout + timeout + 10.0,
                start_agent, meanwhile)
    if not reply.get("ok"):
        raise MeshFailure(str(reply.get("error") or "the mesh could not run the compile"))
    return reply


#: What ``start_agent`` did: started one (the agent this meshcc waits for),
#: found one starting (another meshcc's, not listening yet), or neither.
STARTED, STARTING_ELSEWHERE, NEITHER = "started", "elsewhere", ""


def start_agent(path: str) -> str:
    """Start an agent for ``path`` in the background, detached from us —
    unless one is starting or running: the agent's lock is taken here and
    handed to the agent, so that of the meshcc processes a ``make -j``
    starts at once, one starts it and the others wait for its socket (each
    agent started for nothing cost a whole interpreter and its imports).
    ``STARTED``, ``STARTING_ELSEWHERE`` (its lock is taken and it has not
    bound its socket yet: no process id file), or ``NEITHER`` (an agent
    that has bound its socket and does not answer is not starting)."""
    import fcntl
    from .paths import LOCK_ENV, pid_file
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        lock = -1                          # (the agent says what is wrong)
    if lock >= 0:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if lock <= 2:                  # (we were started without stdin/out/err:
                moved = fcntl.fcntl(lock, fcntl.F_DUPFD_CLOEXEC, 3)  # the agent's
                os.close(lock)             # own 0-2 are /dev/null)
                lock = moved
        except BlockingIOError:
            os.close(lock)                 # an agent has it: wait for its socket
            return NEITHER if os.path.exists(pid_file(path)) else STARTING_ELSEWHERE
        except OSError:
            os.close(lock)
            return NEITHER
        try:                               # ours: no agent lives; its file (if one
            os.unlink(pid_file(path))      # was killed) would say one is bound
        except OSError:
            pass
    env = dict(os.environ)
    env.pop(LOCK_ENV, None)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if lock >= 0:
        env[LOCK_ENV] = str(lock)
    pid = os.fork()
    if pid == 0:                           # the agent: a session of its own, no terminal
        try:
            os.setsid()
            fd = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(fd, std)
            os.chdir("/")
            if os.fork() == 0:             # detached: nobody of the build waits for it
                if lock >= 0:
                    os.set_inheritable(lock, True)
                # -S: the agent needs only the standard library and this
                # package (on PYTHONPATH above); site-packages' .pth files
                # would cost every build's first compile tens of ms.
                os.execve(sys.executable, [sys.executable, "-S", "-m", "crc.cc.agent", path],
                          env)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    if lock >= 0:
        os.close(lock)                     # (the agent holds it now)
    return STARTED
