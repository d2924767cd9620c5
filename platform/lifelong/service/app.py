"""The Ray Serve deployment of the service: HTTP routes, ``@serve.batch`` across callers.

Routes (under the application's route prefix): ``POST /predict``, ``POST /learn``,
``GET /healthz``, ``GET /status``. Requests are parsed and checked whole in the HTTP
handler (``protocol``): a bad one is answered 4xx before it joins a batch, so it changes
nothing and never fails the others. Good ones wait in ``@serve.batch`` queues (one for
predict, one for learn), and each batch is one call of the engine, run in a thread so that the
replica keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from lifelong.config import config_from_dict
from lifelong.errors import BadRequestError
from lifelong.service.answers import error_answer
from lifelong.service.backend import open_backend
from lifelong.service.config import ServeJob
from lifelong.service.engine import Learned
from lifelong.service.protocol import parse_learn, parse_predict

ROUTES = {"/predict": "POST", "/learn": "POST", "/healthz": "GET", "/status": "GET"}


@serve.deployment
class MemoryService:
    """One replica: a client of the named memory, the encoder, the record of request ids.

    Args:
        job_json: The ``ServeJob`` as JSON (paths already absolute).
    """

    def __init__(self, job_json: str):
        from lifelong.service.telemetry import ServeTelemetry

        job = config_from_dict(ServeJob, json.loads(job_json))
        self.settings = job.serve
        replica = serve.get_replica_context().replica_tag
        self.telemetry = ServeTelemetry(job.serve.name, replica)
        self.backend = open_backend(job, writes=self.telemetry.writes.inc)
        self.replica = replica
        # One @serve.batch queue per route, sized by the config (hence made here, per replica).
        batch = serve.batch(max_batch_size=job.serve.max_batch_size,
                            batch_wait_timeout_s=job.serve.batch_wait_timeout_s,
                            max_concurrent_batches=job.serve.max_concurrent_batches)
        self.predict_batch = batch(self.predict_many)
        self.learn_batch = batch(self.learn_many)
        self._stop = threading.Event()
        threading.Thread(target=self._recover, daemon=True, name="serve-recover").start()

    def _recover(self) -> None:
        """Sends the batches a dead replica left open: at start, then every
        ``recover_every_s`` (engine.recover; it never raises for a batch it cannot send)."""
        while True:
            try:
                self.backend.engine.recover(self.settings.claim_timeout_s)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                logging.getLogger(__name__).warning("recovery sweep failed", exc_info=True)
            if self._stop.wait(self.settings.recover_every_s):
                return

    async def __call__(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        route = self._route(request)
        try:
            status, body, headers = await self._handle(route, request)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in JSON
            status, body, headers = error_answer(exc, self.settings.retry_after_s)
        self.telemetry.request(route if route in ROUTES else "other", status,
                               time.perf_counter() - start)
        return JSONResponse(body, status_code=status, headers=headers)

    def _route(self, request: Request) -> str:
        """The path below the application's route prefix (Serve's ``root_path``, else the
        configured prefix: ``serve run`` may mount the application elsewhere)."""
        path = request.url.path
        prefix = (request.scope.get("root_path") or self.settings.route_prefix).rstrip("/")
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
        return path.rstrip("/") or "/"

    async def _handle(self, route: str, request: Request) -> tuple[int, dict, dict]:
        if route not in ROUTES:
            raise BadRequestError(f"no route {route}; routes: {sorted(ROUTES)}", status=404)
        if request.method != ROUTES[route]:
            raise BadRequestError(f"{route} takes {ROUTES[route]}, not {request.method}",
                                  status=405)
        if route == "/healthz":
            return 200, {"status": "ok", "service": self.settings.name,
                         "replica": self.replica}, {}
        if route == "/status":
            status = await asyncio.to_thread(self.backend.engine.status)
            return 200, {"service": self.settings.name, "replica": self.replica,
                         "encoder": self.backend.encoder, **status}, {}
        body = await self._body(request)
        limits = self.backend.limits
        if route == "/predict":
            outcome, batch = await self.predict_batch(parse_predict(body, limits))
            if isinstance(outcome, Exception):
                raise outcome
            return 200, outcome, batch
        outcome, batch = await self.learn_batch(parse_learn(body, limits))
        if isinstance(outcome, Exception):
            raise outcome
        if outcome.replayed:
            self.telemetry.replays.inc()
        return 200, outcome.answer, {**batch,
                                     "X-Lifelong-Replayed": str(outcome.replayed).lower()}

    async def _body(self, request: Request) -> bytes:
        limit = self.backend.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BadRequestError(f"the body has {length} bytes, more than the {limit} "
                                  "allowed", status=413)
        return await request.body()

    def _batch(self, route: str, requests: list) -> dict:
        """Counts the batch Serve formed; its size goes back in the answers' headers."""
        examples = sum(len(r) for r in requests)
        self.telemetry.batch(route, len(requests), examples)
        return {"X-Lifelong-Batch-Requests": str(len(requests)),
                "X-Lifelong-Batch-Examples": str(examples)}

    async def predict_many(self, requests: list) -> list[tuple[dict | Exception, dict]]:
        """A predict batch Serve formed: one encoder pass and one read-only query."""
        batch = self._batch("/predict", requests)
        try:
            answers = await asyncio.to_thread(self.backend.engine.predict, requests)
        except Exception as exc:  # noqa: BLE001 - a memory outage fails the whole batch
            answers = [exc] * len(requests)
        return [(answer, batch) for answer in answers]

    async def learn_many(self, requests: list) -> list[tuple[Learned | Exception, dict]]:
        """A learn batch Serve formed: one planned update under its own writer (so batches
        may run side by side, ``max_concurrent_batches``)."""
        batch = self._batch("/learn", requests)
        outcomes = await asyncio.to_thread(self.backend.engine.learn, requests)
        return [(outcome, batch) for outcome in outcomes]

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()
