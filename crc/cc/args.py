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

``expand_responses`` follows ``@file`` arguments first (GCC's quoting), so
that CMake's and Ninja's response files go to the mesh too; one that cannot
be read stays local.

Pure but for reading response files: runs nothing, knows no socket. On the path of every
compile a build starts, so it imports nothing but ``os`` (no ``re``, no
``dataclasses``: each costs milliseconds per invocation).
"""

from __future__ import annotations

import os

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
_HOST_DEPENDENT = {"-march=native", "-mtune=native", "-mcpu=native"}
#: Options we pass as they are to both steps (the common ones of every build):
#: exact words, and prefixes whose rest must be made of ``_OPTION_CHARS``.
_KNOWN_WORDS = {"-O", "-g", "-Ofast", "-Os", "-Og", "-Oz", "-w", "-ansi", "--ansi", "-pedantic",
                "-pedantic-errors", "--pedantic", "--pedantic-errors", "-pipe", "-pthread",
                "-p", "-pg", "-undef"}
_KNOWN_PREFIXES = ("-O", "-W", "-g", "-f", "-m", "-std=", "--std=")
_OPTION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=_+.,:/-")
_PROBE_NAMES = ("conftest.", "CMakeCCompilerId.", "CMakeCXXCompilerId.")
_PROBE_DIRS = ("CMakeFiles/CMakeTmp/", "CMakeFiles/CMakeScratch/", "/CompilerIdC/",
               "/CompilerIdCXX/")


def known(word: str) -> bool:
    """An option this module may pass on as it is."""
    if word in _KNOWN_WORDS:
        return True
    if word.startswith("-O"):
        return len(word) == 3 and word[2] in "0123456789sgz"
    for prefix in _KNOWN_PREFIXES:
        if word.startswith(prefix) and len(word) > len(prefix):
            return set(word[len(prefix):]) <= _OPTION_CHARS
    return False


def probe(source: str) -> bool:
    """A configure script's or CMake's own test compile."""
    return os.path.basename(source).startswith(_PROBE_NAMES) or \
        any(d in "/" + source for d in _PROBE_DIRS)


def debug_option(word: str) -> bool | None:
    """Whether ``word`` asks for debug information (None: it says nothing)."""
    if word in ("-g0", "-ggdb0", "-gstabs0", "-gxcoff0"):
        return False
    if word == "-g" or word.startswith(("-ggdb", "-gdwarf")) or \
            (word[:2] == "-g" and word[2:].isdigit()):
        return True
    return None


class Local:
    """Run the command line as it is, here; ``reason`` says why."""
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Local({self.reason!r})"


class Remote:
    """One source compiled into one object; the steps' command lines."""
    __slots__ = ("compiler", "source", "language", "output", "preprocess", "compile",
                 "depfile", "debug")

    def __init__(self, compiler: str, source: str, language: str, output: str,
                 preprocess: list[str], compile: list[str], depfile: str | None = None,
                 debug: bool = False) -> None:
        self.compiler = compiler          # argv[0] as given
        self.source = source              # the source as named on the command line
        self.language = language          # "c" or "c++"
        self.output = output              # the object file, as the compiler would name it
        self.preprocess = preprocess      # arguments after the compiler for the local -E
        self.compile = compile            # arguments after the compiler for the remote compile
        self.depfile = depfile            # where -MD/-MMD write, when asked
        self.debug = debug                # -g: the object records the working directory

    def __repr__(self) -> str:
        return f"Remote({self.source!r} -> {self.output!r}, {self.compile!r})"


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
            return Local(f"response file {word} (not followed)")
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
                or word in _HOST_DEPENDENT:
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
            if not known(word):
                return Local(f"option {word} is not one the mesh knows")
            asks = debug_option(word)
            if asks is not None:
                debug = asks
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
    if probe(source):
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
                  preprocess=preprocess, compile=compile_, depfile=depfile, debug=debug)


#: How deep ``@file`` may nest, and how large one may be.
MAX_RESPONSE_DEPTH = 10
MAX_RESPONSE_SIZE = 1 << 20


def split_response(text: str) -> list[str]:
    """The words of a response file as GCC reads them: separated by white
    space, with single or double quotes grouping and a backslash taking the
    next character as it is."""
    words: list[str] = []
    word: list[str] = []
    started = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            word.append(text[i + 1])
            started = True
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
        elif c in "'\"":
            quote = c
            started = True
        elif c.isspace():
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    if started:
        words.append("".join(word))
    return words


def expand_responses(words: list[str], read=None, depth: int = 0) -> list[str] | None:
    """``words`` with every ``@file`` replaced by the words in it (nested too);
    None if one cannot be followed (unreadable, too large, too deep), and the
    command line then runs here as the compiler would read it. ``read(name)``
    returns a file's text (default: read it from the working directory)."""
    if not any(w.startswith("@") for w in words):
        return words
    if depth >= MAX_RESPONSE_DEPTH:
        return None
    out: list[str] = []
    for word in words:
        if not word.startswith("@") or len(word) == 1:
            out.append(word)
            continue
        try:
            text = read(word[1:]) if read is not None else _read_response(word[1:])
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        inner = expand_responses(split_response(text), read, depth + 1)
        if inner is None:
            return None
        out.extend(inner)
    return out


def _read_response(name: str) -> str:
    with open(name, "rb") as f:
        data = f.read(MAX_RESPONSE_SIZE + 1)
    if len(data) > MAX_RESPONSE_SIZE:
        raise ValueError(f"response file {name} is over {MAX_RESPONSE_SIZE} bytes")
    return data.decode()
