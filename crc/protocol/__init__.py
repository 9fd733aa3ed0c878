"""The CRC wire protocol: message values, codec and extension handshake texts."""

from .codec import (DEFAULT_LIMITS, ChatFrame, Decoder, EncodeError, Limits, ProtocolError, encode,
                    encode_parts)
from .messages import *  # noqa: F401,F403 - the vocabulary is the package's API

