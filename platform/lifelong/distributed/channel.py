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
import select
import socket
import threading
import time
from typing import Any, Sequence

import ray

from lifelong.distributed import wire
from lifelong.errors import LifelongError, ProtocolError, ShardUnavailableError

RETRY_CONNECT_S = 5.0  # after a failed connect, a shard's calls go through Ray this long


class ShardServer:
    """Serves ``wire.CALLS`` on ``handler`` (the shard actor) over TCP.

    Args:
        handler: has ``step``, ``search`` and ``apply`` with the shard actor's signatures.
        host: the address to listen on (the node's IP address).
        max_data_bytes: the largest frame accepted (its arrays' bytes).
    """

    def __init__(self, handler: Any, host: str,
                 max_data_bytes: int = wire.DEFAULT_MAX_DATA_BYTES):
        self.handler, self.max_data_bytes = handler, max_data_bytes
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
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
                owed: list = []  # answers to posted updates, sent once their log is durable
                while True:
                    if owed and not select.select([conn], [], [], 0)[0]:
                        self._pay(conn, owed)  # nothing else to do meanwhile
                    owed = self._one_call(conn, owed)
            except (EOFError, OSError):
                return
            except ProtocolError as exc:  # refused; the connection is closed
                self.refused += 1
                try:
                    wire.send_frame(conn, wire.encode("error", wire.error_fields(exc)))
                    _drain(conn)
                except OSError:
                    pass

    def _one_call(self, conn: socket.socket, owed: list) -> list:
        """Runs the next call. An update (``apply``) is applied at once and its answer owed
        until its log frame is durable, so the call behind it (the client's next search)
        runs while the log syncs; every other answer is sent after the owed ones (it waits
        for its own durability, which covers theirs). Returns what is still owed."""
        op, fields, arrays = wire.read_frame(conn, self.max_data_bytes)
        args = wire.decode_call(op, fields, arrays)
        try:
            if op == "apply":
                result, frame = self.handler.apply_ahead(*args)
                return owed + [(wire.encode_result(op, result), frame)]
            reply = wire.encode_result(op, getattr(self.handler, op)(*args))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller, typed
            reply = wire.encode("error", wire.error_fields(exc))
        self._pay(conn, owed)
        wire.send_frame(conn, reply)
        return []

    def _pay(self, conn: socket.socket, owed: list) -> None:
        """Sends the owed answers, in order, once the last one's log frame is durable (an
        error for each if that sync failed)."""
        if not owed:
            return
        try:
            self.handler.durable(max(frame for _, frame in owed))
            replies = [reply for reply, _ in owed]
        except Exception as exc:  # noqa: BLE001 - the sync failed: none of them is durable
            replies = [wire.encode("error", wire.error_fields(exc))] * len(owed)
        for reply in replies:
            wire.send_frame(conn, reply)
        owed.clear()


class _Connection:
    def __init__(self, endpoint: dict, timeout_s: float):
        self.sock = socket.create_connection((endpoint["host"], endpoint["port"]),
                                             timeout=min(timeout_s, 10.0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        done = self._round(self._take(), [[(method, a)] for a in args], [0] * len(args))
        return _raise_first([d[0] for d in done])

    def _round(self, conns: list, calls: list[list[tuple[str, tuple]]],
               sent: list[int]) -> list[list]:
        """Runs ``calls[i]`` on shard i in order, the first ``sent[i]`` of them already sent
        on ``conns[i]``: the rest are sent, then every answer is read. A shard whose
        connection fails gets all its calls again through Ray, in order (a write applies
        once). Returns each call's result, or the error it gave; gives the connections back.
        """
        done: list[list] = [[None] * len(c) for c in calls]
        broken = [False] * len(calls)
        for i, shard_calls in enumerate(calls):
            try:
                conns[i] = conns[i] or self._connect(i)
                if conns[i] is None:
                    broken[i] = True
                    continue
                for method, a in shard_calls[sent[i]:]:
                    wire.send_frame(conns[i].sock, wire.encode_call(method, a))
            except (OSError, ProtocolError):
                conns[i], broken[i] = self._drop(conns[i]), True
        for i, shard_calls in enumerate(calls):
            if broken[i] or (sent[i] and conns[i] is None):
                broken[i] = True
                continue
            for j, (method, _) in enumerate(shard_calls):
                try:
                    op, fields, arrays = wire.read_frame(conns[i].sock)
                    done[i][j] = (wire.rebuild_error(fields) if op == "error"
                                  else wire.decode_result(method, fields, arrays))
                    self.direct_calls += 1
                except socket.timeout:
                    conns[i] = self._drop(conns[i])
                    for jj in range(j, len(shard_calls)):
                        done[i][jj] = ShardUnavailableError(
                            f"memory shard {i} did not answer {method} within "
                            f"{self.timeout_s} s")
                    break
                except (OSError, EOFError, ProtocolError, LifelongError):
                    conns[i], broken[i] = self._drop(conns[i]), True
                    break
        self._give_back(conns)
        for i in (i for i, b in enumerate(broken) if b):
            for j, (method, a) in enumerate(calls[i]):
                self.ray_calls += 1
                try:
                    done[i][j] = self.ray.call_some(method, [i], [a])[0]
                except Exception as exc:  # noqa: BLE001 - the caller raises it, in order
                    done[i][j] = exc
        return done

    def _take(self) -> list:
        with self._lock:
            return self._idle.pop() if self._idle else [None] * len(self.handles)

    def _give_back(self, conns: list) -> None:
        with self._lock:
            self._idle.append(conns)

    def _drop(self, conn: _Connection | None) -> None:
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


def _raise_first(results: list) -> list:
    """``results``, or the first error among them raised."""
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


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
