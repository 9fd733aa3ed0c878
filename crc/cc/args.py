"""What a compiler command line asks for, and whether the mesh may run it.

``plan(argv)`` reads a GCC-style command line (``gcc``, ``g++``, ``cc``,
``c++``; the compiler itself is ``argv[0]``) and returns either a ``Remote``
— one C or C++ source compiled (``-c``) into one object, with the command
lines for the three steps (preprocess here, compile there, and where the
object and dependency file go) — or a ``Local`` naming why it stays here.

The rule is a whitelist: an option this module does not know keeps the
compile local, because the real compiler knows what it means and we do not.
Local are, among others: linking, ``-E``/``-S``/``-M``/``-MM``/
``-fsyntax-only``, sources on standard input or more than one source, a
language other than C or C++, ``@response`` files, configure and CMake probe
compiles, ``-march=native``, profile feedback, ``-save-temps``, plugins,
``-B``/``-specs``, and output that is not one object file.

Pure: reads no file, runs nothing, knows no socket.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: Source suffixes and the language the compiler takes them for.
SOURCE_LANGUAGES = {".c": "c", ".cc": "c++", ".cp": "c++", ".cxx": "c++", ".cpp": "c++",
                    ".CPP": "c++", ".c++": "c++", ".C": "c++"}
#: ``-x`` values we handle (anything else stays local).
LANGUAGES = {"c", "c++"}

#: Options taking the next word as their value; whether the value belongs to
#: the preprocessor (dropped from the remote compile, which gets preprocessed
#: input) or to both steps.
_PRE_WITH_VALUE = {"-I", "-D", "-U", "-include", "-imacros", "-isystem", "-idirafter",
                   "-iquote", "-iprefix", "-iwithprefix", "-iwithprefixbefore",
                   "-imultilib", "-MF", "-MT", "-MQ"}
_BOTH_WITH_VALUE = {"-isysroot"}
#: Options that are the preprocessor's alone and take no value.
_PRE_FLAGS = {"-nostdinc", "-nostdinc++", "-MD", "-MMD", "-MP", "-MG", "-H",
              "-P", "-C", "-CC", "-trigraphs", "-traditional-cpp", "-remap"}
#: Options that keep the compile local, whatever else is given.
_LOCAL_FLAGS = {"-u", "-E", "-S", "-M", "-MM", "-fsyntax-only", "-save-temps", "-v", "-###",
                "--version", "--help", "-print-search-dirs", "-dumpversion",
                "-dumpfullversion", "-dumpmachine", "-gsplit-dwarf", "-fdirectives-only",
                "-fpreprocessed", "-ftest-coverage", "--coverage", "-fprofile-arcs",
                "-shared", "-static", "-pie", "-r", "-nostdlib", "-nostartfiles"}
_LOCAL_PREFIXES = ("-fprofile-use", "-fprofile-generate", "-fauto-profile", "-fplugin",
                   "-B", "-specs", "-save-temps", "-wrapper", "-fdump-", "-print-",
                   "-Wl,", "-Xlinker", "-l", "-L", "-T", "-Xassembler", "-Wa,",
                   "-fcreate-profile", "-frecord-gcc-switches", "-fstack-usage",
                   "-fcallgraph-info", "-fopt-info", "-dump", "-aux-info", "-Xpreprocessor",
                   "-Wp,", "--param=", "-fdiagnostics-format", "-fdiagnostics-plain-output")
#: Options whose value would mean something else on another machine.
_HOST_DEPENDENT = re.compile(r"-m(arch|tune|cpu)=native$")
#: Options we pass as they are to both steps (the common ones of every build).
_KNOWN = re.compile(
    r"-(O[0-9sgz]?|Ofast|W[a-zA-Z0-9=_+,-]*|w|g[a-z0-9=-]*|f[a-zA-Z0-9=_+.,:/-]*|"
    r"m[a-zA-Z0-9=_+.,-]*|std=[a-z0-9+]+|ansi|pedantic(-errors)?|pipe|pthread|p|pg|undef|"
    r"-std=[a-z0-9+]+|-pedantic(-errors)?|-ansi)$")
_CONFIGURE_PROBE = re.compile(r"(^|/)(conftest\.[A-Za-z+]+|CMakeC(XX)?CompilerId\.[A-Za-z+]+)$|"
                              r"(^|/)CMakeFiles/(CMakeTmp|CMakeScratch)/|"
                              r"(^|/)CMakeFiles/[0-9.]+/CompilerId")


@dataclass(frozen=True)
class Local:
    """Run the command line as it is, here; ``reason`` says why."""
    reason: str


@dataclass(frozen=True)
class Remote:
    """One source compiled into one object; the steps' command lines."""
    compiler: str                    # argv[0] as given
    source: str                      # the source as named on the command line
    language: str                    # "c" or "c++"
    output: str                      # the object file, as the compiler would name it
    preprocess: list[str]            # arguments after the compiler for the local ``-E``
    compile: list[str]               # arguments after the compiler for the remote compile
    depfile: str | None = None       # where -MD/-MMD write, when asked
    debug: bool = False              # -g: the object records the working directory
    cache_args: list[str] = field(default_factory=list)   # what of the line affects the object


def plan(argv: list[str]) -> Remote | Local:
    """How ``argv`` (``[compiler, args...]``) is run: remotely or locally."""
    if not argv:
        return Local("no compiler named")
    words = argv[1:]
    compile_only = False
    output: str | None = None
    sources: list[tuple[str, str | None]] = []          # (name, language)
    language: str | None = None                  # from -x, for what follows
    pre: list[str] = []
    both: list[str] = []
    deps = {"MD": False, "MF": None, "MT": False}
    debug = False
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else None
        i += 1
        if word.startswith("@"):
            return Local(f"response file {word}")
        if word == "-c":
            compile_only = True
        elif word == "-o" or word.startswith("-o") and len(word) > 2:
            if output is not None:
                return Local("more than one -o")
            if word == "-o":
                if value is None:
                    return Local("-o without a file")
                output, i = value, i + 1
            else:
                output = word[2:]
        elif word == "-x" or word.startswith("-x") and len(word) > 2:
            lang = word[2:] or value
            if lang is None:
                return Local("-x without a language")
            if word == "-x":
                i += 1
            if lang == "none":
                language = None
            elif lang not in LANGUAGES:
                return Local(f"language {lang}")
            else:
                language = lang
        elif word == "-":
            return Local("source on standard input")
        elif word in _LOCAL_FLAGS or word.startswith(_LOCAL_PREFIXES) \
                or _HOST_DEPENDENT.match(word):
            return Local(f"option {word}")
        elif word in _PRE_WITH_VALUE or word in _BOTH_WITH_VALUE:
            if value is None:
                return Local(f"{word} without a value")
            i += 1
            if word == "-MF":
                deps["MF"] = value
            if word in ("-MT", "-MQ"):
                deps["MT"] = True
            (both if word in _BOTH_WITH_VALUE else pre).extend((word, value))
        elif word[:2] in ("-I", "-D", "-U") or word.startswith(("-MF", "-MT", "-MQ")):
            if word.startswith("-MF"):
                deps["MF"] = word[3:]
            if word.startswith(("-MT", "-MQ")):
                deps["MT"] = True
            pre.append(word)
        elif word in _PRE_FLAGS or word.startswith("-isystem") or word.startswith("-iquote") \
                or word.startswith("-idirafter"):
            if word in ("-MD", "-MMD"):
                deps["MD"] = True
            pre.append(word)
        elif word.startswith("-") and len(word) > 1:
            if not _KNOWN.match(word):
                return Local(f"option {word} is not one the mesh knows")
            if re.match(r"-g(gdb|dwarf)?[0-9]*$|-g(gdb|dwarf-?[0-9]*)$", word):
                debug = not word.endswith("0") or word.startswith("-gdwarf")
            both.append(word)
        else:
            suffix = os.path.splitext(word)[1]
            lang = language or SOURCE_LANGUAGES.get(suffix)
            sources.append((word, lang))
    if not compile_only:
        return Local("not a compile (-c): linking or another mode")
    if len(sources) != 1:
        return Local("no source" if not sources else "more than one source")
    source, lang = sources[0]
    if lang is None:
        return Local(f"input {source} is not a C or C++ source")
    if _CONFIGURE_PROBE.search(source):
        return Local("a configure or CMake probe")
    if output is None:
        output = os.path.splitext(os.path.basename(source))[0] + ".o"
    if output == "-" or output.endswith(("/", os.sep)):
        return Local(f"output {output!r} is not an object file")
    depfile = None
    if deps["MD"]:
        depfile = deps["MF"] or os.path.splitext(output)[0] + ".d"
        if deps["MF"] is None:
            pre += ["-MF", depfile]
        if not deps["MT"]:
            pre += ["-MQ", output]
    elif deps["MF"] is not None:
        depfile = deps["MF"]
    language_flag = ["-x", lang] if language is not None else []
    preprocess = both + pre + language_flag + ["-E", "-fdirectives-only", source]
    compile_ = both + ["-c"] + language_flag
    return Remote(compiler=argv[0], source=source, language=lang, output=output,
                  preprocess=preprocess, compile=compile_, depfile=depfile, debug=debug,
                  cache_args=list(both))
