"""The CRC wire protocol: message values, codec and extension handshake texts.

``messages`` (the vocabulary), ``codec`` (messages to bytes and back),
``handshake`` (the hello texts) and ``auth`` (the mesh secret and its proofs).

The bottom layer: imports nothing else of ``crc`` and does no I/O: no
sockets, no event loop, no files but the secret file ``auth`` reads.
"""

from .codec import (DEFAULT_LIMITS, ChatFrame, Decoder, EncodeError, Limits, ProtocolError, encode,
                    encode_parts)
from .messages import *  # noqa: F401,F403 - the vocabulary is the package's API

