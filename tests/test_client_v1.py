"""The chat client against a scripted plain CRC v1 server (a listening socket
the test plays with the codec): only its own server's answers, addressed to
it, may turn a link into an extension link."""

from __future__ import annotations

import socket
import threading

import pytest

from crc.client import ChatClient, ClientConfig
from crc.protocol import (ClientRegistration, Decoder, MsgType, Status, StatusCode, encode)
from crc.protocol.handshake import Hello

from .meshkit import call, run_loop, wait_for


class ScriptedServer:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.sock: socket.socket | None = None
        self.decoder = Decoder()
        self.received: list = []

    def accept(self) -> None:
        self.listener.settimeout(10)
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(0.05)

    def send(self, *msgs) -> None:
        for msg in msgs:
            self.sock.sendall(encode(msg))

    def read(self) -> list:
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            data = b""
        if data:
            self.received += self.decoder.feed(data)
        return self.received

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.listener.close()


@pytest.fixture
def scripted():
    server = ScriptedServer()
    yield server
    server.close()


def test_a_hello_reply_from_anyone_but_our_server_is_just_a_status(scripted) -> None:
    client = ChatClient(ClientConfig(("127.0.0.1", scripted.port), "carol", 101, reliable=True))
    client.start()
    thread = threading.Thread(target=run_loop, args=(client.loop,), daemon=True)
    thread.start()
    try:
        scripted.accept()
        wait_for(lambda: any(isinstance(m, ClientRegistration) for m in scripted.read()), 10,
                 "the registration")
        scripted.send(Status(7, 101, StatusCode.WELCOME, "Welcome to the Clemson Relay Chat "
                             "network carol"))
        wait_for(lambda: any(isinstance(m, Status) and m.code == StatusCode.MESH_HELLO
                             for m in scripted.read()), 10, "the client's hello")
        # Another client's server forwards a reply forged by someone else.
        forged = Hello(role="server", features=frozenset({"ext", "rchat"})).text()
        scripted.send(Status(102, 101, StatusCode.MESH_HELLO_REPLY, forged),
                      Status(7, 0, StatusCode.MESH_HELLO_REPLY, forged))
        wait_for(lambda: len(call(client.loop, lambda: client.status_log)) == 3, 10,
                 "the two statuses to be logged")
        assert not call(client.loop, lambda: client.ext)
        # A plain v1 server echoes the hello: then the link is settled as plain.
        scripted.send(Status(101, 101, StatusCode.MESH_HELLO, "echo"))
        wait_for(lambda: call(client.loop, lambda: client.plain), 10, "the plain settlement")
        call(client.loop, lambda: client.send_chat(5, "hello"))
        wait_for(lambda: any(m.type is MsgType.CLIENT_CHAT for m in scripted.read()), 10,
                 "the chat, as v1")
        assert not any(m.type is MsgType.EXTENSION for m in scripted.read())
    finally:
        client.loop.stop()
        thread.join(10)
        client.close()
