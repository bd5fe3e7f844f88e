"""The Ray Serve application: a gateway that takes every HTTP request and hands it, as plain data, to a
replica chosen by the AffinityRouter; each replica runs the whole app (every dialect, the page, the API
key, its models) in-process and streams the answer back. The router sees the request's prompt because
the gateway passes it along: Ray's HTTP proxy alone would route before reading the body."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

import psutil
from ray import serve
from ray.serve.config import AutoscalingConfig, HTTPOptions, RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.cluster.affinity import prompt_key
from app.cluster.errors import ReplicaLostError, body_of, stream_error
from app.cluster.http_call import HttpCall, ResponseStart, answer
from app.cluster.metrics import labelled
from config.settings import Settings

log = logging.getLogger(__name__)
APP_NAME = "hychat"
REPLICA_HEADER = b"x-hychat-replica"  # which replica answered (its Ray replica id)
METRICS_TIMEOUT_S = 10  # a scrape whose replicas take longer is a 503


class Replica:
    """One model process: the app as `hychat serve` runs it, its start-up and shutdown included."""

    async def __init__(self, settings: Settings):
        from app.logging_setup import configure_logging
        from app.main import create_app

        configure_logging(settings.log_level)
        self.app = create_app(settings)
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()  # loads the configured models: a bad file fails the replica here
        self.id = serve.get_replica_context().replica_id.unique_id

    async def handle(self, call: HttpCall) -> AsyncIterator[ResponseStart | bytes]:
        async for part in answer(self.app, call, self.id):
            yield part

    async def metrics(self, call: HttpCall) -> tuple[ResponseStart, bytes]:
        """`call` (a GET /metrics) answered whole, for the gateway's broadcast to every replica."""
        parts = [part async for part in answer(self.app, call, self.id)]
        start = parts[0]
        assert isinstance(start, ResponseStart)
        return start, b"".join(p for p in parts if isinstance(p, bytes))

    async def check_health(self) -> None:
        """Ray's readiness and liveness check: the app's own /ready (a model loaded and answering)."""
        parts = [part async for part in answer(self.app, HttpCall("GET", "/ready", b"", [], b""))]
        if not (isinstance(parts[0], ResponseStart) and parts[0].status == 200):
            raise RuntimeError(f"not ready: {b''.join(p for p in parts if isinstance(p, bytes))!r}")

    async def __del__(self) -> None:
        await self.lifespan.__aexit__(None, None, None)  # keeps the prompt states where a disk folder is set


class Gateway:
    """Every path and method: the body read (bounded), the call handed to a replica, its answer streamed."""

    def __init__(self, replicas: DeploymentHandle, max_request_bytes: int):
        self.all_replicas = replicas
        self.replicas = replicas.options(method_name="handle", stream=True)
        self.max_request_bytes = max_request_bytes

    async def __call__(self, request: Request) -> Response:
        body = await _body(request, self.max_request_bytes)
        scope = request.scope
        path = scope["path"]
        call = HttpCall(request.method, path, scope["query_string"], list(scope["headers"]), body,
                        scope.get("client"), prompt_key(body))  # fmt: skip
        if request.method == "GET" and path == "/metrics":
            return await self._metrics(call)
        stream: DeploymentResponseGenerator = self.replicas.remote(call)
        try:
            start = await stream.__anext__()
        except Exception as error:  # the replica died before it answered
            log.warning("replica lost before answering %s %s: %r", request.method, path, error)
            lost = ReplicaLostError(error)
            return JSONResponse(body_of(path)(lost), status_code=503, headers={"Retry-After": str(lost.retry_after_s)})
        # Ray's proxy sets X-Request-Id itself (the same id: the replica's app took it from the request).
        headers = [(k, v) for k, v in start.headers if k.lower() != b"x-request-id"]
        headers.append((REPLICA_HEADER, start.replica.encode()))
        content_type = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
        response = StreamingResponse(_rest(stream, path, content_type), status_code=start.status)
        response.raw_headers = headers
        return response

    async def _metrics(self, call: HttpCall) -> Response:
        """Every replica's /metrics, each sample labelled with its replica (cluster.metrics); a refusal
        (the API key, metrics off) as the replicas answer it. A replica that fails is left out."""
        broadcast = self.all_replicas.broadcast("metrics", call)
        try:
            answers = await broadcast.results_async(timeout_s=METRICS_TIMEOUT_S, return_exceptions=True)
        except TimeoutError as error:  # Ray bounds the whole broadcast, not each replica
            answers = [error]
        answered = [answer for answer in answers if not isinstance(answer, BaseException)]
        if not answered:
            lost = ReplicaLostError(next(iter(answers), TimeoutError("no replica")))
            return JSONResponse(body_of(call.path)(lost), status_code=503, headers={"Retry-After": "1"})
        refused = next(((start, body) for start, body in answered if start.status != 200), None)
        if refused is not None:
            start, body = refused
            headers = [(k, v) for k, v in start.headers if k.lower() not in (b"content-length", b"x-request-id")]
        else:  # (each replica's Process-Start-Time-Unix is its own: left out)
            start, body = answered[0][0], labelled({s.replica: b.decode() for s, b in answered}).encode()
            headers = [(k, v) for k, v in start.headers if k.lower() == b"content-type"]
        response = Response(body, status_code=start.status)
        response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
        return response


async def _rest(stream: DeploymentResponseGenerator, path: str, content_type: str) -> AsyncIterator[bytes]:
    """The body's pieces; a replica lost mid-stream ends it with the dialect's error frame, never a hang."""
    piece = b""
    try:
        async for piece in stream:
            yield piece
    except Exception as error:
        log.warning("replica lost while streaming %s: %r", path, error)
        yield stream_error(path, content_type, ReplicaLostError(error), piece)
    finally:  # the client went away (Ray cancels the call too): the replica's app sees a disconnect
        stream.cancel()


async def _body(request: Request, max_bytes: int) -> bytes:
    """The body, up to one byte past the bound: the replica's app answers 413 in the caller's dialect."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            break
    return b"".join(chunks)


def build(settings: Settings) -> Any:
    """The application to `serve.run`: replicas of `settings`' models, each with the CPUs its threads use."""
    threads = settings.llamacpp_n_threads or 1
    per_replica = settings.model_copy(update={"llamacpp_n_threads": threads})
    if settings.ray_max_replicas and settings.ray_max_replicas > settings.ray_replicas:
        scaling: dict[str, Any] = {"autoscaling_config": AutoscalingConfig(
            min_replicas=settings.ray_replicas, max_replicas=settings.ray_max_replicas,
            target_ongoing_requests=settings.parallel,  # a replica's slots busy: add one
        )}  # fmt: skip
    else:
        scaling = {"num_replicas": settings.ray_replicas}
    replicas = serve.deployment(Replica).options(
        name="replica",
        ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=settings.parallel + settings.queue_size,  # beyond: they wait in the router
        request_router_config=_router(settings),
        **scaling,
    )
    gateway = serve.deployment(Gateway).options(
        name="gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000
    )
    return gateway.bind(replicas.bind(per_replica), settings.max_request_bytes)


def _router(settings: Settings) -> RequestRouterConfig:
    if settings.ray_routing == "balanced":
        return RequestRouterConfig()  # Ray's default, power of two choices
    return RequestRouterConfig(
        request_router_class="app.cluster.router.AffinityRouter",
        request_router_kwargs={"max_extra_load": settings.parallel},
    )


def run(settings: Settings) -> None:
    """Deploy on the cluster at `settings.ray_address` ("local": start one here) and serve until stopped
    (Ctrl-C or SIGTERM); then the application leaves the cluster, and a local cluster stops."""
    import ray

    ray.init(address=settings.ray_address)  # "local": a new cluster here, even beside a running one
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C (after ray.init, which sets its own)
    try:
        serve.start(http_options=HTTPOptions(host=settings.hosts()[0], port=settings.port))
        serve.run(build(settings), name=APP_NAME, route_prefix="/")
        log.info("serving on http://%s:%d with %d replicas", settings.hosts()[0], settings.port, settings.ray_replicas)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        # A local cluster's processes are ours; Ray 2.60's ray.shutdown() can leave its agents behind.
        local = psutil.Process().children(recursive=True) if settings.ray_address == "local" else []
        ray.shutdown()
        _, alive = psutil.wait_procs(local, timeout=3)
        for process in alive:
            process.kill()
        log.info("the cluster stopped (%d of its processes killed)", len(alive))
