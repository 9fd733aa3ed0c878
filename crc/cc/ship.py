"""A compile shipped as source: the command line over there, and back.

Instead of preprocessing here, meshcc may send the source and every header
it includes (``crc.cc.includes``) through the content-addressed store, each
under its absolute path inside the job's ``ROOT_DIR`` — so a header crosses
each link once and stays in the server's store for every later compile.
The server runs the compile in ``ROOT_DIR`` + our working directory, and:

* absolute paths on the command line (``-I``, ``-iquote``, ``-isystem``,
  ``-idirafter``, ``-include``, ``-imacros``, the source) point into that
  root through the relative prefix ``P`` (``../`` up to the job directory,
  then ``ROOT_DIR``); relative ones stay as they are;
* ``-nostdinc`` and the compiler's own include directories (``probe``, from
  ``COMPILER -v``), as ``-isystem P/dir``, replace its built-in list; the
  header it includes before everything (``stdc-predef.h``) is named with
  ``-include``;
* ``-ffile-prefix-map=P/=/`` here and ``JOBDIR/ROOT_DIR=`` there (the
  server adds it) make ``__FILE__`` and the debug information name the
  paths this machine has: the object comes out byte for byte as a local
  compile's (tested, with and without ``-g``);
* a dependency file comes back with paths of over there, and is written
  here again (``rewrite_deps``) with each file named as the local compiler
  would name it, wrapped as it wraps lines. Before trusting our writer it
  must reproduce the server's text from the server's own names; when it
  cannot, the compile is done here.

Pure: command lines and text in and out; reads nothing, runs nothing.
"""

from __future__ import annotations

import os

from ..jobs.compilers import ROOT_DIR
from .includes import Found, Search

#: What the compile over there writes, in the job directory (not in the
#: root: no directories to make here when they come back).
OUTPUT = "meshcc-out.o"
DEPS = "meshcc-out.d"
#: Options naming a directory searched for headers.
_DIR_OPTIONS = ("-I", "-iquote", "-isystem", "-idirafter")
#: Options naming a file read before the source.
_FILE_OPTIONS = ("-include", "-imacros")
#: Preprocessor options this mode does not handle (the compile is preprocessed here).
_NOT_SHIPPED = ("-nostdinc", "-nostdinc++", "-iprefix", "-iwithprefix", "-iwithprefixbefore",
                "-isysroot", "-imultilib", "-I-", "-remap", "-traditional-cpp", "-MG", "-H",
                "--sysroot", "-trigraphs")
#: GCC wraps dependency lines that would pass this column.
DEP_COLUMNS = 72


class NotShipped(Exception):
    """This compile is not one to ship as source; why."""


class Probe:
    """What the compiler does by itself: its include directories (in order)
    and the headers it includes before the source."""
    __slots__ = ("dirs", "preincludes")

    def __init__(self, dirs: list[str], preincludes: list[str]) -> None:
        self.dirs = dirs
        self.preincludes = preincludes


def parse_probe(stderr: str, stdout: str) -> Probe:
    """A ``COMPILER FLAGS -x LANG -E -M -v /dev/null`` run's output: the
    bracket directories from ``-v`` and the preincluded headers from ``-M``."""
    dirs: list[str] = []
    inside = False
    for line in stderr.splitlines():
        if line.startswith("#include <...> search starts here"):
            inside = True
        elif line.startswith("End of search list"):
            break
        elif inside and line.startswith(" "):
            dirs.append(line.strip())
    if not inside:
        raise NotShipped("the compiler did not list its include directories")
    words = stdout.replace("\\\n", " ").split()
    pre = [w for w in words[1:] if not w.endswith(":") and w != "/dev/null"]
    return Probe(dirs, pre)


def probe_flags(words: list[str], language: str) -> list[str]:
    """The options of ``words`` that may change the compiler's own include
    directories (every plain option: ``-m32`` does), without sources,
    outputs, include options, macros or dependency options: compiles that
    differ only in those share one probe."""
    out = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word in ("-o", "-MF", "-MT", "-MQ", "-D", "-U", "-x", *_DIR_OPTIONS, *_FILE_OPTIONS):
            i += 1
            continue
        if not word.startswith("-") or word == "-c" or word.startswith(
                ("-o", "-D", "-U", "-M", "-I", "-iquote", "-isystem", "-idirafter", "-x")):
            continue
        out.append(word)
    return [*out, "-x", language]


class Shipment:
    """A compile to ship: its command line over there, its search path here."""
    __slots__ = ("argv", "prefix", "search", "preincludes", "depfile")

    def __init__(self, argv: list[str], prefix: str, search: Search,
                 preincludes: list[tuple[str, str | None]], depfile: str | None) -> None:
        self.argv = argv                  # without the compiler
        self.prefix = prefix              # P: the root, from the working directory there
        self.search = search
        self.preincludes = preincludes    # (name, where the compiler finds it / None)
        self.depfile = depfile            # where the dependency file goes here


def root_prefix(cwd: str) -> str:
    """``P`` for a compile in ``cwd``: up to the job directory, into the root."""
    depth = len([part for part in cwd.split("/") if part])
    return "../" * (depth + 1) + ROOT_DIR


def plan_shipment(words: list[str], cwd: str, output: str, source: str,
                  probe: Probe) -> Shipment:
    """The command line over there for the compile ``words`` (the compiler's
    arguments, response files expanded) in ``cwd``; ``NotShipped`` if this
    mode does not handle it."""
    prefix = root_prefix(cwd)
    depth = len([part for part in cwd.split("/") if part])
    up = "../" * (depth + 1)            # the job directory: outputs come back from there

    def mapped(path: str) -> str:
        if path.startswith("/"):
            # As given ("/p/./inc" stays so: the compiler names headers, and
            # -g records directories, as written); files are placed at their
            # normal paths, which the kernel finds through "." and "..".
            return prefix + path
        parts = path.split("/")
        ups = 0
        for part in parts:
            if part != "..":
                break
            ups += 1
        if ups > depth:
            raise NotShipped(f"{path} climbs above /")
        return path

    argv: list[str] = []
    quote: list[str] = []
    angled: list[str] = []
    system: list[str] = []
    after: list[str] = []
    files: list[tuple[str, str | None]] = []
    deps = {"MD": False, "MF": None, "MT": False}
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else None
        i += 1
        if word in _NOT_SHIPPED or word.startswith(("--sysroot", "-iprefix", "-iwithprefix")):
            raise NotShipped(f"option {word}")
        if word.startswith("-W") and word.endswith("missing-include-dirs"):
            # Over there a directory with nothing shipped from it is missing
            # (and a kept job directory may hold one this machine lacks).
            raise NotShipped(f"option {word}")
        option = next((o for o in _DIR_OPTIONS + _FILE_OPTIONS if word.startswith(o)), None)
        if option is not None:
            given = word[len(option):]
            if not given:
                if value is None:
                    raise NotShipped(f"{word} without a value")
                given, i = value, i + 1
            if option in _FILE_OPTIONS:
                files.append((given, None))
            else:
                {"-I": angled, "-iquote": quote, "-isystem": system,
                 "-idirafter": after}[option].append(given)
            argv += [option, mapped(given)]
            continue
        if word in ("-o", "-MF"):
            i += 1
            if word == "-MF":
                deps["MF"] = value
            continue
        if word.startswith("-MF"):
            deps["MF"] = word[3:]
            continue
        if word.startswith("-o"):
            continue
        if word in ("-MD", "-MMD"):
            deps["MD"] = True
        if word in ("-MT", "-MQ") or word.startswith(("-MT", "-MQ")):
            deps["MT"] = True
        if word in ("-MT", "-MQ", "-D", "-U", "-x") and value is not None:
            argv += [word, value]
            i += 1
            continue
        if word == source:
            argv.append(mapped(word))
            continue
        argv.append(word)
    depfile = None
    if deps["MD"]:
        depfile = deps["MF"] or os.path.splitext(output)[0] + ".d"
        argv += ["-MF", up + DEPS]
        if not deps["MT"]:
            argv += ["-MQ", output]
    elif deps["MF"] is not None:
        raise NotShipped("-MF without -MD or -MMD")
    own: list[tuple[str, str | None]] = [(os.path.basename(n), n) for n in probe.preincludes]
    own_words = [w for name in probe.preincludes for w in ("-include", os.path.basename(name))]
    argv = [*own_words, *argv, "-o", up + OUTPUT, "-nostdinc"]
    for folder in probe.dirs:
        argv += ["-isystem", prefix + os.path.normpath(folder)]
    argv.append(f"-ffile-prefix-map={prefix}/=/")
    search = Search(quote, [*((d, False) for d in angled), *((d, True) for d in system),
                            *((d, True) for d in probe.dirs), *((d, True) for d in after)])
    return Shipment(argv, prefix, search, [*own, *files], depfile)


def shorter(name: str, cwd: str) -> str:
    """A system header's name as GCC writes it: its real path when that is
    shorter (``-fcanonical-system-headers``, the default)."""
    real = os.path.realpath(os.path.join(cwd, name))
    return real if len(real) < len(name) else name


# -- dependency files ---------------------------------------------------------------------


def _render(head: str, names: list[str]) -> str:
    """A dependency rule as GCC writes it: ``head`` (the targets, as written),
    a colon, then each name, starting a new line where one would pass
    ``DEP_COLUMNS``."""
    out = [head, ":"]
    col = len(head) - (head.rfind("\n") + 1) + 1
    for name in names:
        if col + len(name) > DEP_COLUMNS:
            out.append(" \\\n")
            col = 0
        out.append(" ")
        out.append(name)
        col += 1 + len(name)
    out.append("\n")
    return "".join(out)


def rewrite_deps(text: str, cwd: str, prefix: str, closure: list[Found]) -> str | None:
    """The dependency file ``text`` (written over there) as the local
    compiler would have written it; None if that cannot be done exactly."""
    end = text.find(":\n")
    end2 = text.find(": ")
    cut = min((e for e in (end, end2) if e >= 0), default=-1)
    if cut < 0:
        return None
    head = text[:cut]
    stop = text.find("\n", cut + 1)
    while stop > 0 and text[stop - 1] == "\\":
        stop = text.find("\n", stop + 1)
    if stop < 0:
        return None
    rule, rest = text[:stop + 1], text[stop + 1:]
    listed = rule[cut + 1:]
    if any(mark in listed or mark in rest for mark in ("\\ ", "$$", "\\#", "\t")):
        return None                         # escaped names: not ours to rewrite
    names = listed.replace("\\\n", " ").split()
    if _render(head, names) != rule:
        return None                         # not written as we write it: do not guess
    if rest and rest != "".join(f"{n}:\n" for n in names[1:]):
        return None
    by_path = {f.path: f for f in closure}
    root = "/" + ROOT_DIR + "/"
    local = []
    for name in names:
        if name.startswith(prefix + "/"):
            path = name[len(prefix):]
        elif name.startswith("/") and root in name:
            path = name[name.index(root) + len(root) - 1:]
        elif name.startswith("/"):
            return None                     # a file of the server's own: not ours
        else:
            path = os.path.normpath(os.path.join(cwd, name))
        found = by_path.get(path)
        if found is None:
            return None
        local.append(shorter(found.name, cwd) if found.system else found.name)
    phony = "".join(f"{n}:\n" for n in local[1:]) if rest else ""
    return _render(head, local) + phony
