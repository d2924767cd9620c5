"""The direct channel between a client and its shard actors: one TCP connection per client and
shard, for the calls of every training step (``wire.CALLS``: step, search, apply).

Why: a Ray actor call costs far more than the shard's work on a small memory (task submission,
the raylet and core-worker hops, serialisation: measured by ``benchmarks/profile_sharded.py``).
A step's call on an open connection is one frame each way (``lifelong.distributed.wire``).
Everything else (state, status, load_state, snapshot, ping) still goes through Ray, and so
does a step call whose connection fails (docs/design.md §3.11).

- ``ShardServer`` runs in the shard actor: it listens on the node's address, checks each new
  connection's token (handed out by the actor's Ray method ``endpoint``, so only a client that
  can call the actor through Ray, token-authenticated where Ray is, can connect), and serves
  each connection in a thread of its own, calling the actor's methods: the shard's lock, group
  commit, exactly-once table and metrics are the same as for Ray calls.
- ``DirectShards`` is the client's shard group: for a step call it sends one frame to every
  shard, then reads the answers. A shard whose connection cannot be opened, breaks, or answers
  with a malformed frame gets the same call through Ray instead (``RayShards``), which waits
  for a restarted actor as before; a write is applied once whatever path carried it, by its
  (writer, seq). A shard that does not answer within the timeout gives
  ``ShardUnavailableError``; an error the shard raised comes back typed.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
import time
from typing import Any, Sequence

import ray

from lifelong.distributed import wire
from lifelong.errors import ProtocolError, ShardUnavailableError

RETRY_CONNECT_S = 5.0  # after a failed connect, a shard's calls go through Ray this long
SOCKET_BUFFER_BYTES = 1 << 20  # each way: a step's answer (about 75 KB) never waits for room


def _tune(sock: socket.socket) -> None:
    """Both ends of a connection: no Nagle delay, buffers larger than any step's frame."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)


class ShardServer:
    """Serves ``wire.CALLS`` on ``handler`` (the shard actor) over TCP.

    Args:
        handler: runs the calls: ``handler.serve(op, args)`` if it has one (the shard actor),
            else its method ``op`` (``step``, ``search``, ``apply``, e.g. a ``MemoryShard``);
            its ``after_reply()``, if any, runs after each answer has been sent.
        host: the address to listen on (the node's IP address).
        max_data_bytes: the largest frame accepted (its arrays' bytes).
    """

    def __init__(self, handler: Any, host: str,
                 max_data_bytes: int = wire.DEFAULT_MAX_DATA_BYTES):
        self.max_data_bytes = max_data_bytes
        self._run_call = getattr(handler, "serve", None) or \
            (lambda op, args: getattr(handler, op)(*args))
        self._after_reply = getattr(handler, "after_reply", None) or (lambda: None)
        self.token = secrets.token_hex(32)
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, self.listener.getsockname()[1]
        self.refused = 0  # connections or frames refused (bad token, malformed frame)
        threading.Thread(target=self._accept, name="shard-channel", daemon=True).start()

    def endpoint(self) -> dict:
        """Where and how to connect: host, port and the token."""
        return {"host": self.host, "port": self.port, "token": self.token}

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            _tune(conn)
            threading.Thread(target=self._serve, args=(conn,), name="shard-channel-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                op, fields, _ = wire.read_frame(conn, max_data_bytes=4096)
                token = fields.get("token")
                if op != "hello" or not isinstance(token, str) or \
                        not hmac.compare_digest(token.encode(), self.token.encode()):
                    raise ProtocolError("the connection did not present the shard's token")
                wire.send_frame(conn, wire.encode("ok"))
                while True:
                    self._one_call(conn)
            except (EOFError, OSError):
                return
            except ProtocolError as exc:  # refused; the connection is closed
                self.refused += 1
                try:
                    wire.send_frame(conn, wire.encode("error", wire.error_fields(exc)))
                    _drain(conn)
                except OSError:
                    pass

    def _one_call(self, conn: socket.socket) -> None:
        """Runs the next call and sends its answer (or its error, typed), then lets the
        handler do what can wait until the answer has left (``after_reply``)."""
        op, fields, arrays = wire.read_frame(conn, self.max_data_bytes)
        args = wire.decode_call(op, fields, arrays)
        try:
            reply = wire.encode_result(op, self._run_call(op, args))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller, typed
            reply = wire.encode("error", wire.error_fields(exc))
        wire.send_frame(conn, reply)
        self._after_reply()


class _Connection:
    def __init__(self, endpoint: dict, timeout_s: float):
        self.sock = socket.create_connection((endpoint["host"], endpoint["port"]),
                                             timeout=min(timeout_s, 10.0))
        _tune(self.sock)
        self.sock.settimeout(timeout_s)
        wire.send_frame(self.sock, wire.encode("hello", {"token": endpoint["token"]}))
        op, fields, _ = wire.read_frame(self.sock, max_data_bytes=1 << 16)
        if op != "ok":
            self.sock.close()
            raise ProtocolError(f"the shard refused the connection: {fields.get('message')}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DirectShards:
    """A shard group (``ShardGroup``) that sends ``wire.CALLS`` over direct connections and
    everything else, and every call a connection cannot carry, through ``ray_shards``.

    Several threads may call at once: each call takes a set of connections of its own (a pool
    keeps them open between calls), so one thread's calls stay in order on each shard.

    Attributes:
        direct_calls, ray_calls: shard calls made each way (a fallback counts as a Ray call).
    """

    def __init__(self, ray_shards):
        self.ray = ray_shards
        self._lock = threading.Lock()
        self._idle: list[list] = []  # connection sets not in use, one entry per shard
        self._endpoints: list[dict | None] = [None] * len(ray_shards.handles)
        self._retry_at = [0.0] * len(ray_shards.handles)
        self.direct_calls = self.ray_calls = 0

    @property
    def handles(self) -> list:
        return self.ray.handles

    @property
    def timeout_s(self) -> float:
        return self.ray.timeout_s

    def call(self, method: str, args: Sequence[tuple]) -> list:
        """``method(*args[i])`` on every shard i, answers in shard order.

        Raises:
            ShardUnavailableError: a shard did not answer within the timeout.
            LifelongError: the typed error a shard raised (the first, in shard order).
        """
        if method not in wire.CALLS:
            return self.ray.call(method, args)
        conns = self._take()
        results: list = [None] * len(args)
        broken = []
        for i, a in enumerate(args):
            try:
                conns[i] = conns[i] or self._connect(i)
                if conns[i] is None:
                    broken.append(i)
                    continue
                wire.send_frame(conns[i].sock, wire.encode_call(method, a))
            except (OSError, ProtocolError):
                conns[i] = self._drop(conns[i])
                broken.append(i)
        for i, conn in enumerate(conns):
            if conn is None:
                continue
            try:
                op, fields, arrays = wire.read_frame(conn.sock)
                results[i] = (wire.rebuild_error(fields) if op == "error"
                              else wire.decode_result(method, fields, arrays))
                self.direct_calls += 1
            except socket.timeout:
                conns[i] = self._drop(conn)
                results[i] = ShardUnavailableError(
                    f"memory shard {i} did not answer {method} within {self.timeout_s} s")
            except (OSError, EOFError, ProtocolError):
                conns[i] = self._drop(conn)
                broken.append(i)
        self._give_back(conns)
        broken.sort()
        if broken:  # the same call through Ray: a write is applied once by (writer, seq)
            self.ray_calls += len(broken)
            try:
                for i, r in zip(broken, self.ray.call_some(method, broken,
                                                           [args[i] for i in broken])):
                    results[i] = r
            except Exception as exc:  # noqa: BLE001 - raised below, in shard order
                results[broken[0]] = exc
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _take(self) -> list:
        with self._lock:
            return self._idle.pop() if self._idle else [None] * len(self.handles)

    def _give_back(self, conns: list) -> None:
        with self._lock:
            self._idle.append(conns)

    def _drop(self, conn: _Connection | None) -> None:
        """Closes ``conn`` (if any); returns None, the slot's new value."""
        if conn is not None:
            conn.close()
        return None

    def _connect(self, i: int) -> _Connection | None:
        """A new connection to shard i, or None while its connects fail (``RETRY_CONNECT_S``)."""
        if time.monotonic() < self._retry_at[i]:
            return None
        for _ in range(2):  # a cached endpoint may be stale (a restarted actor): ask again
            try:
                if self._endpoints[i] is None:
                    self._endpoints[i] = ray.get(self.handles[i].endpoint.remote(),
                                                 timeout=self.timeout_s)
                return _Connection(self._endpoints[i], self.timeout_s)
            except (OSError, ProtocolError):
                self._endpoints[i] = None
            except ray.exceptions.RayError:
                break  # the Ray path reports it
        self._retry_at[i] = time.monotonic() + RETRY_CONNECT_S
        return None

    def close(self) -> None:
        """Closes every idle connection."""
        with self._lock:
            for conns in self._idle:
                for conn in conns:
                    self._drop(conn)
            self._idle = []

    def __getstate__(self):  # a copy in another process opens connections of its own
        return {"ray": self.ray}

    def __setstate__(self, state):
        self.__init__(state["ray"])



def _drain(conn: socket.socket, limit: int = 1 << 20) -> None:
    """Ends our side, then reads what the peer still sends (up to ``limit`` bytes, 0.5 s)
    so that closing does not reset the connection before it has read the error frame."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(0.5)
    read = 0
    while read < limit:
        chunk = conn.recv(65536)
        if not chunk:
            return
        read += len(chunk)
