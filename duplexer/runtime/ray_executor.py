"""The Ray executor: one session's actors spread over Ray actors, on a bus that crosses processes.

The driver (the process that owns the transport: a WebRTC call, an MQTT device,
the simulated user) keeps the actors that must sit next to it (playout, which
writes to the call's sink), and by default the actors that read every audio frame
(VAD, ASR, tokenizer), because sending 50 frames a second per session across
processes costs more than running a small VAD where the audio already is
(``duplexer bench executors`` measures both). The other actors run in Ray actors,
"session hosts", built from the same actor classes: nothing in an actor knows
which executor runs it, and nothing here names an actor: the pipeline's
:class:`~duplexer.runtime.placement.ActorCatalog` (``RayOptions.actors``) says
which actors exist and which must stay in the driver.

A session host holds session state (the controller's state, the history), so it
is never restarted behind the session's back: when one dies, its session gets a
fatal :class:`~duplexer.runtime.events.ErrorEvent` and ends, and no other session
notices. Inside a host, the ordinary supervisor restarts a crashed actor as it
does locally. Engines shared by many sessions (an LLM on a GPU node) run as Ray
Serve deployments, which replace a dead replica on their own
(:mod:`duplexer.actors.ray_serve_engines`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from duplexer.runtime.actor import Actor, ActorSpec, RestartPolicy, SessionContext, Supervisor
from duplexer.runtime.clock import EpochClock
from duplexer.runtime.events import ErrorEvent, Event
from duplexer.runtime.linked_bus import LinkedBus
from duplexer.runtime.logging import get_logger
from duplexer.runtime.metrics import Metrics
from duplexer.runtime.placement import ActorCatalog, Placement
from duplexer.runtime.session import StopsOnExit

RAY_INSTALL_HINT = "pip install 'duplexer[ray]' (Ray with Ray Serve)"
HOST_STOP_TIMEOUT_S = 5.0


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


@dataclass(frozen=True)
class RayOptions:
    """How sessions run on Ray."""

    address: str | None = None
    """A running cluster (``ray start --head`` prints it), or None to start a local instance."""
    actors: ActorCatalog = field(default_factory=ActorCatalog)
    """The pipeline's actors, from the code that builds it: what ``placement`` is checked against,
    and what a pooled host imports ahead of its sessions."""
    placement: Placement = field(default_factory=lambda: Placement(()))
    """Every actor not placed on a host runs in the driver (by default, all of them)."""
    batch_ms: float = 0.0
    """Hold data events for a host up to this long, to send fewer, larger messages (0: one per loop turn)."""
    host_num_cpus: float = 0.0
    """CPUs reserved per session host; hosts mostly wait on I/O, so by default they reserve none."""
    max_restarts: int = 0
    """Ray restarts of a session host. A restarted host would have lost the session's state, so 0."""
    sessions_per_host: int = 1
    """Sessions one host process serves at once. 1: each session has hosts of its own, and a host
    failure ends only that session, but each session pays for worker processes. More: sessions
    share hosts (through a :class:`HostPool`), so a host failure ends every session on it."""
    num_cpus: int | None = None
    """CPUs of a local instance (default: this machine's)."""
    log_level: str = "WARNING"


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--executor ray needs Ray: {RAY_INSTALL_HINT}") from None
    return ray


def ensure_ray(options: RayOptions) -> Any:
    """Connect to the cluster at ``options.address``, or start a local instance; once per process."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if options.address:
        kwargs["address"] = options.address
    else:
        kwargs["num_cpus"] = options.num_cpus or os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise RayUnavailable(f"--ray-address {options.address}: cannot connect to a Ray cluster ({exc})") from None
    return ray


def new_host(options: RayOptions, label: str) -> Any:
    """Start one session host (a Ray actor in a worker process of its own); returns its handle.

    Actor names must be unique across a cluster and session ids need not be, hence the suffix.
    """
    from duplexer.runtime.ray_host import host_class

    cls = host_class(options.max_restarts, options.host_num_cpus)
    name = f"duplexer:{label}:{uuid.uuid4().hex[:8]}"
    return cls.options(name=name, namespace="duplexer").remote(options.log_level, options.sessions_per_host)


Receiver = tuple[Callable[[list[Event]], None], Callable[[], None], Callable[[BaseException], None]]
"""What a session gives a :class:`HostChannel`: (deliver its events, it ended, its host died)."""


class HostChannel:
    """The driver's end of one session host, for every session on it.

    One long-poll brings back the events of all the host's sessions, so a host costs one waiting
    call however many sessions share it. With ``coalesce``, the data batches of its sessions
    published in one event-loop turn travel in one call (control batches still go at once).
    """

    def __init__(self, handle: Any, coalesce: bool) -> None:
        from duplexer.runtime.ray_host import pack, unpack

        self.handle, self.coalesce = handle, coalesce
        self._pack, self._unpack = pack, unpack
        self.receivers: dict[tuple[str, str], Receiver] = {}
        self._outbox: list[Any] = []
        self._flush_handle: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None

    def sender(self, key: tuple[str, str], sender: str) -> Callable[[str, int, list[Event]], None]:
        """A :class:`LinkedBus` send function for one session's link to this host."""
        from duplexer.runtime.linked_bus import CONTROL
        from duplexer.runtime.ray_host import sender_to

        direct = sender_to(self.handle, key, sender)
        if not self.coalesce:
            return direct

        def send(lane: str, seq: int, events: list[Event]) -> None:
            if lane == CONTROL:
                self.flush()  # what was published before it goes first
                direct(lane, seq, events)
                return
            self._outbox.append((key, sender, lane, seq, events))
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

        return send

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self.handle.deliver.remote(self._pack(batch))

    def attach(self, key: tuple[str, str], receiver: Receiver) -> None:
        """Route a session's events from the host to ``receiver`` (until it ends or the host dies)."""
        self.receivers[key] = receiver
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pull(), name="pull-host")

    def detach(self, key: tuple[str, str]) -> None:
        self.receivers.pop(key, None)

    async def _pull(self) -> None:
        while self.receivers:
            try:
                batch = self._unpack(await self.handle.pull.remote())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the host died: every session on it is over
                receivers, self.receivers = list(self.receivers.values()), {}
                for _deliver, _ended, died in receivers:
                    died(exc)
                return
            for key, events, ended in batch:
                receiver = self.receivers.get(key)
                if receiver is None:
                    continue
                if events:
                    receiver[0](events)
                if ended:
                    del self.receivers[key]
                    receiver[1]()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.receivers.clear()


class HostPool:
    """Session hosts started before sessions need them, as LiveKit Agents prewarms job processes.

    Starting a host starts a Ray worker process (about a CPU-second on this machine's cores, and
    seconds of waiting); taken from a pool, a session's host is already up. Each pooled host
    imports the catalog's ``preload`` modules at once (``options.actors``): unpickling a session's
    actors in a cold host imports the actor modules, which costs about as much CPU as starting the
    process.

    With ``options.sessions_per_host`` 1, a pooled host still serves exactly one session and dies
    with it, so a host failure still ends only that session; ``idle`` > 0 starts a replacement
    whenever one is taken. With more, the pool shares its hosts: :meth:`take` hands out a free
    slot (starting a host when none is free), :meth:`release` frees it, and ``idle`` counts free
    slots.
    """

    def __init__(self, options: RayOptions, idle: int = 0) -> None:
        if idle < 0:
            raise ValueError(f"idle hosts must be >= 0, got {idle}")
        if options.sessions_per_host < 1:
            raise ValueError(f"sessions per host must be >= 1, got {options.sessions_per_host}")
        self.options, self.idle, self.preload = options, idle, list(options.actors.preload)
        self.slots = options.sessions_per_host
        self._hosts: list[Any] = []
        """Hosts with a free slot, in the order they are handed out."""
        self._free: dict[Any, int] = {}
        """Free slots of every host this pool owns (shared hosts stay here while they serve)."""
        self._preloads: dict[Any, Any] = {}
        """Each host's preload call: :meth:`fill` waits for these (a ping could overtake them)."""
        self._channels: dict[Any, HostChannel] = {}
        """The driver's channel to each shared host, which all its sessions use."""
        self.top_up()

    @property
    def shared(self) -> bool:
        return self.slots > 1

    def __len__(self) -> int:
        return len(self._hosts)

    def free_slots(self) -> int:
        return sum(self._free[host] for host in self._hosts)

    def _start(self) -> Any:
        host = new_host(self.options, "pooled" if not self.shared else "shared")
        self._preloads[host] = host.preload.remote(self.preload)
        self._hosts.append(host)
        self._free[host] = self.slots
        return host

    def top_up(self, to: int | None = None) -> None:
        """Start hosts until ``to`` (default: the pool's ``idle``) sessions could start at once."""
        while self.free_slots() < (self.idle if to is None else to):
            self._start()

    async def fill(self, count: int) -> None:
        """Have room for ``count`` sessions on hosts that answer (before a known burst of sessions)."""
        self.top_up(count)
        await asyncio.gather(*(_await(self._preloads[host]) for host in self._hosts))

    def take(self) -> Any | None:
        """A started host with a slot for a new session. None when none waits and hosts are not
        shared (the session starts its own); a shared pool starts one."""
        if not self._hosts:
            if not self.shared:
                return None
            self._start()
        host = self._hosts[0]
        self._free[host] -= 1
        if not self._free[host]:
            self._hosts.pop(0)
            if not self.shared:
                del self._free[host]
                self._preloads.pop(host, None)
        self.top_up()
        return host

    def release(self, host: Any) -> None:
        """A session on a shared host stopped: its slot is free again."""
        if not self.shared or host not in self._free:
            return
        self._free[host] += 1
        if host not in self._hosts:
            self._hosts.append(host)

    def channel(self, host: Any) -> HostChannel:
        """The channel to a shared host (each session on it sends and receives through it)."""
        if host not in self._channels:
            self._channels[host] = HostChannel(host, coalesce=True)
        return self._channels[host]

    def forget(self, host: Any) -> None:
        """A host died: hand it out no more."""
        channel = self._channels.pop(host, None)
        if channel is not None:
            channel.close()
        self._free.pop(host, None)
        self._preloads.pop(host, None)
        if host in self._hosts:
            self._hosts.remove(host)

    def shutdown(self) -> None:
        """Kill the hosts still waiting, and shared hosts (exclusive hosts die with their sessions)."""
        ray = ray_module()
        for host in list(self._free):
            ray.kill(host, no_restart=True)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._hosts.clear()
        self._free.clear()
        self._preloads.clear()


class RaySession(StopsOnExit):
    """A session on Ray, used like :class:`~duplexer.runtime.session.Session`.

    Actors added with :meth:`add` run in the driver at once. :meth:`place` builds each
    spec where the placement says: in the driver with the given engines, or in a session
    host with engines from ``engine_factory`` (called there as ``factory(clock, sink)``).
    Placed actors start together in :meth:`ready`, which must be awaited before the
    conversation begins. ``failed`` is set when a host dies; the session is then over.
    """

    def __init__(
        self,
        options: RayOptions,
        session_id: str | None = None,
        engine_factory: Callable[..., Any] | None = None,
        restart_policy: RestartPolicy | None = None,
        pool: HostPool | None = None,
    ) -> None:
        self.ray = ensure_ray(options)
        if options.sessions_per_host > 1 and pool is None:
            raise ValueError("sessions_per_host > 1 shares hosts between sessions, through a HostPool")
        self.pool = pool
        """Session hosts started ahead of demand; without one, each host starts with its session."""
        self.shares_hosts = pool is not None and pool.shared
        """Its hosts serve other sessions too: they come from the pool and go back to it."""
        self.options = options
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.clock = EpochClock()
        self.metrics = Metrics()
        self.bus = LinkedBus(self.session_id, self.clock, self.metrics)
        self.ctx = SessionContext(self.session_id, self.bus, self.clock, self.metrics)
        self.restart_policy = restart_policy or RestartPolicy()
        self.supervisor = Supervisor(self.ctx, self.restart_policy)
        self.engine_factory = engine_factory
        self.hosts: dict[str, Any] = {}
        self.slot_token = uuid.uuid4().hex[:12]
        """Names this session's slot in each of its hosts (with the host's name): session ids need not be unique."""
        self._started: dict[str, Any] = {}
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self.host_counters: dict[str, dict[str, float]] = {}
        self._channels: dict[str, HostChannel] = {}
        self._ended: dict[str, asyncio.Event] = {}
        """Set when a host has handed over the last of this session's events, or died."""
        self._watches: list[asyncio.Task[None]] = []
        self._stopping = False
        self._kinds_version = 0
        self._sent_kinds: frozenset[type[Event]] | None = None
        self._go = asyncio.Event()
        """Set by :meth:`ready`: the driver's placed actors run from then (their inputs queue until)."""
        self.log = get_logger(session_id=self.session_id, executor="ray")

    def add(self, *actors: Actor) -> None:
        for actor in actors:
            self.supervisor.start(actor)

    def place(self, specs: Iterable[ActorSpec], engines: Any = None) -> dict[str, Actor]:
        """Build each actor where the placement puts it; returns the ones that run in the driver.

        Nothing runs until :meth:`ready`, so no actor sees session time before it is final; events
        published meanwhile wait in the actors' queues (in a host, in its inbox).
        """
        from duplexer.runtime.ray_host import DRIVER, SlotSpec

        specs = list(specs)
        self.options.actors.check(self.options.placement, running=(spec.name for spec in specs))
        local: dict[str, Actor] = {}
        remote: dict[str, list[ActorSpec]] = {}
        for spec in specs:
            host = self.options.placement.host_of(spec.name)
            if host is None:
                actor = local[spec.name] = spec.build(self.ctx, engines)
                self.supervisor.start(actor, gate=self._go)
            else:
                remote.setdefault(host, []).append(spec)
        kinds = {host: _kinds(host_specs) for host, host_specs in remote.items()}
        for host in remote:
            taken = self.pool.take() if self.pool is not None else None
            self.hosts[host] = taken if taken is not None else new_host(self.options, f"{self.session_id}:{host}")
        driver_kinds = self._sent_kinds = self.bus.subscribed_kinds()
        for host, host_specs in remote.items():
            peers = {other: (self.hosts[other], kinds[other]) for other in remote if other != host}
            slot = SlotSpec(
                self.session_id,
                self.clock.epoch_s,
                host_specs,
                self.engine_factory,
                peers,
                driver_kinds,
                self.options.batch_ms,
                self.restart_policy,
            )
            started = self._started[host] = self.hosts[host].start.remote(self._key(host), slot)
            handle = self.hosts[host]
            channel = self._channels[host] = (
                self.pool.channel(handle) if self.pool is not None and self.shares_hosts else HostChannel(handle, False)
            )
            self._ended[host] = ended = asyncio.Event()
            died = functools.partial(self._host_died, host)
            channel.attach(self._key(host), (self.bus.deliver_local, ended.set, died))
            self.bus.link(host, kinds[host], channel.sender(self._key(host), DRIVER), self.options.batch_ms)
            self._watches.append(asyncio.create_task(self._watch_start(host, started), name=f"start:{host}"))
        self.bus.on_subscribe = self._driver_kinds_changed
        return local

    def _key(self, host: str) -> tuple[str, str]:
        return (self.slot_token, host)

    def _driver_kinds_changed(self) -> None:
        kinds = self.bus.subscribed_kinds()
        if kinds == self._sent_kinds:
            return
        self._sent_kinds = kinds
        self._kinds_version += 1
        for host, handle in self.hosts.items():
            handle.set_driver_kinds.remote(self._key(host), self._kinds_version, kinds)

    async def _watch_start(self, host: str, started: Any) -> None:
        """Report a host that could not build its actors: the session cannot go on."""
        try:
            await started
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._stopping:
                died = isinstance(exc, self.ray.exceptions.RayActorError)
                self._lost(host, exc, "died" if died else "could not start")

    def _host_died(self, host: str, exc: BaseException) -> None:
        self._ended[host].set()
        if not self._stopping and not self.failed.is_set():
            self._lost(host, exc)

    def _lost(self, host: str, exc: BaseException, what: str = "died") -> None:
        cause = _first_line(exc)
        reason = f"session host {host!r} {what} ({cause}); session {self.session_id} ends"
        self.failure = reason
        self.metrics.incr("ray.host_lost", host=host)
        self.log.error("session_host_lost", host=host, error=cause)
        self.ctx.emit(ErrorEvent, source=f"ray:{host}", message=reason, fatal=True)
        self.failed.set()

    async def ready(self, restart_clock: bool = False) -> None:
        """Wait until every host has built its actors (raises if one could not), then start the
        placed actors everywhere.

        With ``restart_clock``, session time starts from 0 now, in every process, so a scripted
        conversation is not shortened by the seconds Ray took to start the hosts. No placed actor
        has run before this, so none sees time go back.
        """
        await asyncio.gather(*self._started.values())
        epoch = time.time() if restart_clock else None
        if epoch is not None:
            self.clock.rebase(epoch)
        self._go.set()
        await asyncio.gather(*(handle.go.remote(self._key(host), epoch) for host, handle in self.hosts.items()))

    async def ping(self) -> dict[str, float]:
        """Each host's session time: a liveness probe (raises if a host is gone)."""
        names = list(self.hosts)
        times = await asyncio.gather(*(self.hosts[n].ping.remote(self._key(n)) for n in names))
        return dict(zip(names, times, strict=True))

    async def stop(self) -> None:
        """Stop the driver's actors and every host; kill the hosts so no Ray actor outlives the session."""
        self._stopping = True
        self.bus.flush_all()
        for channel in self._channels.values():
            channel.flush()  # a shared host's coalesced batches go before this session's stop
        await self.supervisor.stop()
        names = list(self.hosts)
        results = await asyncio.gather(
            *(asyncio.wait_for(_await(self.hosts[n].stop.remote(self._key(n))), HOST_STOP_TIMEOUT_S) for n in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict):
                self.host_counters[name] = result
        # each host hands over this session's last events, then says it ended
        ended = [event.wait() for event in self._ended.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*ended), HOST_STOP_TIMEOUT_S)
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        for name, channel in self._channels.items():
            channel.detach(self._key(name))
            if not self.shares_hosts:  # a shared host's channel goes on serving its other sessions
                channel.close()
        for name, result in zip(names, results, strict=True):
            handle = self.hosts[name]
            if self.pool is not None and self.shares_hosts:
                # a shared host goes on serving other sessions, unless it is gone
                (self.pool.release if isinstance(result, dict) else self.pool.forget)(handle)
            else:
                self.ray.kill(handle, no_restart=True)
        for name in names:
            self.bus.unlink(name)
        self._watches.clear()


def _first_line(exc: BaseException) -> str:
    """The cause of a Ray error in one line: the innermost exception's type and message."""
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) else exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[-1]}" if lines else type(inner).__name__


async def _await(ref: Any) -> Any:
    return await ref


def _kinds(specs: Iterable[ActorSpec]) -> frozenset[type[Event]] | None:
    kinds: set[type[Event]] = set()
    for spec in specs:
        kinds.update(spec.cls.subscribes)
    return frozenset(kinds)
