"""Text from other machines made safe to show on a terminal or in a log.

Names, infos, chat and status texts, server names and job output come from
the network: anyone on it can put a control character in them. Written raw,
``ESC ] 0 ; TITLE BEL`` renames the reader's terminal and hides the line,
``ESC [ 31 m`` colours the screen, a newline forges a second log line.
``visible`` turns every such character into a printable escape (``\\x1b``,
``\\n``, ``\\u202e``), so what is shown is what was sent, and nothing more.

Only presentation uses this: the wire keeps the bytes as they were, and batch
``run`` keeps job output byte-exact on its standard output.
"""

from __future__ import annotations

import logging
import re

#: C0 controls (tab included), DEL, C1 controls, and the Unicode marks that
#: reorder or hide what follows them (bidirectional overrides and isolates,
#: line and paragraph separators).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e"
                                 "\u2066-\u2069]")


def visible(text: str, newlines: bool = False) -> str:
    """``text`` with every control or reordering character shown as an
    escape (``newlines``: but line breaks kept, for our own multi-line
    messages that quote names)."""
    unsafe = _UNSAFE_BUT_NEWLINE if newlines else _UNSAFE
    return unsafe.sub(_escape, text) if unsafe.search(text) else text


class VisibleFormatter(logging.Formatter):
    """A log formatter that keeps each record on one line, whatever names and
    texts from the network it quotes (no forged lines, no terminal control).
    A traceback, which is ours, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))
