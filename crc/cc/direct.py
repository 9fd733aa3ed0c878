"""The local compile cache: a rebuild that changed nothing runs neither the
preprocessor nor anything on the mesh.

After a clean compile (remote or from the mesh's cache), meshcc records a
*manifest* under a key made of the compiler's identity, the whole command
line, the working directory and the source's digest: every file the
preprocessor read (from the line markers of its output), each with its
digest and its size, inode, modification and change times; the object; the
dependency file, if one was written. The next time the same command line
meets the same source, each listed file is checked — by its stat when that
is unchanged and was not too fresh to trust when recorded (a file changed
twice within a timestamp's tick would fool it), else by its digest — and if
all match, the object and dependency file are copied into place.

An entry is one file, ``ROOT/KK/KEY``: the manifest (``marshal``) followed by
the object's bytes — one file written per compile. ``MESHCC_CACHE_SIZE``
is kept as ccache keeps its own, a bucket (``KK``) at a time: now and then a
recording takes one bucket at random and drops its least recently used
entries past a 256th of the bound (the keys spread evenly over the
buckets), so no compile ever walks the whole cache. (An older layout kept
objects apart, under ``objects/``: its entries are misses, and the first
trim removes that directory.)

Sources using ``__DATE__``/``__TIME__``/``__TIMESTAMP__`` are never
recorded (``wrapper.cacheable``), nor are compiles that printed anything.
``MESHCC_CACHE=0`` turns this off with the mesh's cache;
``MESHCC_CACHE_DIR`` moves it (default ``$XDG_CACHE_HOME/crc-mesh/meshcc``),
``MESHCC_CACHE_SIZE`` bounds it (bytes, default 1 GiB; the least recently
used entries go first).

On the path of every compile: imports ``os``, ``marshal`` and the bare
SHA-256 module only (``hashlib`` would load OpenSSL first: milliseconds per
compile). Never reached by anything on the network.
"""

from __future__ import annotations

import marshal
import os
import time

try:                                   # the builtin SHA-256 (3.12: _sha2; 3.11: _sha256)
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256

#: Files changed this recently (seconds) when recorded are checked by digest.
FRESH = 2.0
DEFAULT_SIZE = 1 << 30


def cache_dir() -> str:
    given = os.environ.get("MESHCC_CACHE_DIR", "").strip()
    if given:
        return given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "crc-mesh", "meshcc")


def size_limit() -> int:
    text = os.environ.get("MESHCC_CACHE_SIZE", "").strip()
    try:
        return max(1 << 20, int(text)) if text else DEFAULT_SIZE
    except ValueError:
        return DEFAULT_SIZE


def digest_file(path: str) -> str | None:
    h = sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def direct_key(compiler: str, args: list[str], source: str) -> str | None:
    """The key of this invocation, or None if the source or compiler cannot
    be read. The compiler counts by its resolved path and stat (size, inode,
    times), as ccache's default check does: a reinstalled compiler misses."""
    digest = digest_file(source)
    real = os.path.realpath(compiler)
    stamp = _stat(real)
    if digest is None or stamp is None:
        return None
    material = "\0".join([real, repr(stamp), os.getcwd(), digest, *args])
    return sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


#: Buckets an entry's key spreads over (the first two hex digits).
BUCKETS = 256
#: Entry format (``marshal`` manifest, then the object's bytes).
VERSION = 2


class DirectCache:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or cache_dir()

    def _entry(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key)

    def lookup(self, key: str, output: str, depfile: str | None) -> bool:
        """Put the recorded object (and dependency file) in place if every file
        the compile read is as it was; True if it did."""
        entry = self._entry(key)
        try:
            with open(entry, "rb") as f:
                manifest = marshal.load(f)
                obj = f.read()
            if manifest.get("v") != VERSION:
                return False
            files, deps, size = manifest["files"], manifest["deps"], manifest["size"]
        except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            return False
        if (deps is None) != (depfile is None) or len(obj) != size:
            return False
        for path, digest, stamp in files:
            now = _stat(path)
            if now is None:
                return False
            if stamp is not None and tuple(stamp) == now:
                continue
            if digest_file(path) != digest:
                return False
        try:
            write_atomically(output, obj)
            if depfile is not None:
                write_atomically(depfile, deps)
            os.utime(entry)                     # recently used
        except OSError:
            return False
        return True

    def record(self, key: str, read: list[str], output: str, depfile: str | None,
               known: list | None = None) -> None:
        """Remember a clean compile that read the files ``read``; ``known``,
        when given, is each one's ``[digest, size, inode, mtime_ns,
        ctime_ns]`` as it was compiled (meshcc's agent read them to ship
        them), else each is read again here."""
        if known is not None and (len(known) != len(read) or not all(
                isinstance(k, list) and len(k) == 5 for k in known)):
            known = None
        try:
            recorded = time.time()
            files = []
            for i, path in enumerate(read):
                if known is not None:
                    digest, stamp = known[i][0], tuple(known[i][1:])
                else:
                    stamp = _stat(path)
                    digest = digest_file(path)
                if stamp is None or digest is None:
                    return                      # read something we cannot see again
                fresh = recorded - stamp[2] / 1e9 < FRESH or recorded - stamp[3] / 1e9 < FRESH
                files.append((path, digest, None if fresh else stamp))
            with open(output, "rb") as f:
                obj = f.read()
            deps = None
            if depfile is not None:
                with open(depfile, "rb") as f:
                    deps = f.read()
            entry = self._entry(key)
            manifest = marshal.dumps({"v": VERSION, "files": files, "deps": deps,
                                      "size": len(obj)})
            try:
                write_entry(entry, manifest + obj)
            except FileNotFoundError:           # (its bucket is new)
                os.makedirs(os.path.dirname(entry), exist_ok=True)
                write_entry(entry, manifest + obj)
            if int.from_bytes(os.urandom(1), "big") < 4:   # now and then: bound the size
                self.trim_bucket(size_limit())
        except OSError:
            return

    def _buckets(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        if "objects" in names:                  # (the older layout's objects)
            import shutil
            shutil.rmtree(os.path.join(self.root, "objects"), ignore_errors=True)
        return [n for n in names if len(n) == 2 and all(c in "0123456789abcdef" for c in n)]

    @staticmethod
    def _entries(bucket: str) -> list[tuple[float, str, int]]:
        """(last used, path, size) of the entries in ``bucket``."""
        out = []
        try:
            with os.scandir(bucket) as found:
                for item in found:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out.append((st.st_mtime, item.path, st.st_size))
        except OSError:
            pass
        return out

    @staticmethod
    def _drop_oldest(entries: list[tuple[float, str, int]], total: int, limit: int) -> int:
        entries.sort()
        for _, path, size in entries:
            if total <= limit:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
        return total

    def trim_bucket(self, limit: int, bucket: str | None = None) -> None:
        """One bucket (``bucket``, else one taken at random) to a
        ``BUCKETS``-th of ``limit`` bytes, its least recently used entries
        first: what a recording does now and then."""
        buckets = self._buckets()
        if bucket is None and buckets:
            bucket = buckets[os.urandom(1)[0] % len(buckets)]
        if bucket is not None:
            entries = self._entries(os.path.join(self.root, bucket))
            self._drop_oldest(entries, sum(e[2] for e in entries), limit // BUCKETS)

    def trim(self, limit: int) -> None:
        """The whole cache to at most ``limit`` bytes, least recently used
        entries first."""
        entries = []
        for name in self._buckets():
            entries += self._entries(os.path.join(self.root, name))
        self._drop_oldest(entries, sum(e[2] for e in entries), limit)


def write_entry(path: str, data: bytes) -> None:
    """A new entry is written under its own name, no temporary renamed over
    it (a rename cost the agent 0.5 ms, blocked, per compile): a reader that
    finds it half written takes it for a miss (its object is shorter than
    the manifest says, or the manifest does not load). One that is there
    already (its files changed since) is replaced whole."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        write_atomically(path, data)
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
