"""Engines shared by many sessions, as Ray Serve deployments (``--executor ray --share llm,tts,asr``).

A deployment's replicas each build one engine from the same factory the local
executor uses (``factory(clock, sink)``, keeping the named field). Sessions call it
through a deployment handle wrapped in the engine's own interface, so the actors
do not know the engine is remote. Streams are Serve streaming responses: closing
the stream (a barge-in, a discarded speculation) cancels the call, and the
cancellation reaches the replica, which stops generating. GPU engines ask for
``num_gpus``, so on a cluster their replicas land on GPU nodes. When a replica
dies, calls in flight fail (the session's actor turns that into an error event
and a spoken fallback) and Serve starts a new replica for the next turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from duplexer.actors.engines import SHAREABLE, AudioSink, Engines, Message
from duplexer.runtime.clock import Clock, EpochClock
from duplexer.runtime.ray_host import NoSinkHere

SERVE_APP_PREFIX = "duplexer-"
HEALTH_CHECK_PERIOD_S = 1.0
"""How often Serve checks a replica; a dead one is replaced within a few of these."""


class EngineReplica:
    """One replica's engine (made a Serve deployment by :func:`deploy_shared_engines`)."""

    def __init__(self, factory: Callable[[Clock, AudioSink], Engines], kind: str) -> None:
        self.kind = kind
        self.engine = getattr(factory(EpochClock(), NoSinkHere()), kind)

    async def info(self) -> tuple[int, frozenset[str]]:
        """A TTS engine's output rate and the instructions it renders."""
        return self.engine.sample_rate_hz, frozenset(self.engine.renderable_instructions)

    async def stream(self, messages: list[Message], reply_id: str) -> AsyncIterator[str]:
        async for piece in self.engine.stream(messages, reply_id):
            yield piece

    async def synthesize(self, text: str, reply_id: str, instructions: tuple[str, ...]) -> AsyncIterator[bytes]:
        async for chunk in self.engine.synthesize(text, reply_id, instructions):
            yield chunk

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        text: str = await self.engine.transcribe(pcm, start_ms, end_ms, final)
        return text


async def _streamed(response: Any) -> AsyncIterator[Any]:
    """Items of a Serve streaming response; closing this iterator early cancels the call on the replica."""
    finished = False
    try:
        async for item in response:
            yield item
        finished = True
    finally:
        if not finished:
            response.cancel()


@dataclass
class ServeLlm:
    handle: Any

    def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        return _streamed(self.handle.options(stream=True).stream.remote(list(messages), reply_id))


@dataclass
class ServeTts:
    handle: Any
    sample_rate_hz: int
    renderable_instructions: frozenset[str]

    def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        return _streamed(self.handle.options(stream=True).synthesize.remote(text, reply_id, tuple(instructions)))


@dataclass
class ServeAsr:
    handle: Any

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        text: str = await self.handle.transcribe.remote(pcm, start_ms, end_ms, final)
        return text


class _Resolved:
    """Engines of one process: shared ones through Serve, the rest built from ``base`` when first asked for."""

    def __init__(self, shared: dict[str, Any], base: Callable[[Clock, AudioSink], Engines], clock: Clock, sink: Any):
        self._shared, self._base, self._clock, self._sink = shared, base, clock, sink
        self._built: Engines | None = None

    def __getattr__(self, kind: str) -> Any:
        if kind in self._shared:
            return self._shared[kind]
        if self._built is None:
            self._built = self._base(self._clock, self._sink)
        return getattr(self._built, kind)


@dataclass
class SharedEngines:
    """An engine factory whose shared kinds are Serve deployments; picklable, so Ray hosts can use it.

    Called like any factory, ``(clock, sink)``; it builds the other engines from ``base`` only when
    an actor of that process asks for one (a host running only the LLM actor never loads a VAD).
    """

    base: Callable[[Clock, AudioSink], Engines]
    shared: dict[str, Any] = field(default_factory=dict)

    def __call__(self, clock: Clock, sink: AudioSink) -> Any:
        return _Resolved(self.shared, self.base, clock, sink)


@dataclass(frozen=True)
class ShareOptions:
    """What runs as a Serve deployment, and with what resources."""

    kinds: tuple[str, ...] = ("llm",)
    replicas: int = 1
    llm_gpus: float = 0.0
    """GPUs per LLM replica: on a cluster, its replicas then land on nodes started with ``--num-gpus``."""
    num_cpus: float = 0.0
    max_ongoing_requests: int = 16

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in SHAREABLE]
        if unknown:
            raise ValueError(f"shared engines: unknown kind(s) {', '.join(unknown)}; one of {', '.join(SHAREABLE)}")


def deploy_shared_engines(base: Callable[[Clock, AudioSink], Engines], options: ShareOptions) -> SharedEngines:
    """Start one Serve application per shared kind (Ray must be initialised) and return the factory."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    shared: dict[str, Any] = {}
    for kind in options.kinds:
        deployment: Any = serve.deployment(
            EngineReplica,
            name=f"{kind}-engine",
            num_replicas=options.replicas,
            max_ongoing_requests=options.max_ongoing_requests,
            health_check_period_s=HEALTH_CHECK_PERIOD_S,
            health_check_timeout_s=4 * HEALTH_CHECK_PERIOD_S,
            ray_actor_options={
                "num_cpus": options.num_cpus,
                "num_gpus": options.llm_gpus if kind == "llm" else 0.0,
            },
        )
        handle = serve.run(deployment.bind(base, kind), name=SERVE_APP_PREFIX + kind, route_prefix=None)
        if kind == "tts":
            rate, renderable = handle.info.remote().result()
            shared[kind] = ServeTts(handle, rate, renderable)
        elif kind == "llm":
            shared[kind] = ServeLlm(handle)
        else:
            shared[kind] = ServeAsr(handle)
    return SharedEngines(base, shared)


def shutdown_shared_engines(kinds: Iterable[str]) -> None:
    from ray import serve

    for kind in kinds:
        serve.delete(SERVE_APP_PREFIX + kind)
