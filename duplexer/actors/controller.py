"""Controller actor: feeds bus events and timer ticks to the pure turn-taking state machine."""

from __future__ import annotations

import asyncio

from duplexer.policies.controller import CONTROLLER_INPUTS, Controller, ControllerError, PolicyParams
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import ErrorEvent, Event, MetricEvent, PolicyUpdate, StateChanged, Tick

RULE_VIOLATION = "controller rule violation"
"""How a strict controller's error event begins, so a driver that does not hold the actor (the
controller on a Ray host) still learns of the violation from the bus."""


class ControllerActor(Actor):
    """Runs the policy it is given on its inputs; :class:`PolicyUpdate` changes its parameters live
    (a plug-in policy keeps its rules: an update replaces values, never the parameters' class).

    ``strict`` (the simulator): a rule that breaks the table's promises raises, crashing this actor,
    and is kept in ``violation`` for the caller to raise (and published as a fatal error event that
    begins with :data:`RULE_VIOLATION`, for a caller on another host). Off (a live session), the state machine turns
    it into an error event and a safe reset, and the call goes on.
    """

    name = "controller"
    subscribes = (*CONTROLLER_INPUTS, PolicyUpdate)

    def __init__(self, ctx: SessionContext, policy: PolicyParams | None = None, strict: bool = False) -> None:
        """``policy``: the parameters to run, whose class names the rules they are read by (a policy
        plug-in's own table, or the built-in one: :func:`duplexer.policies.controller.table_of`)."""
        super().__init__(ctx)
        self.controller = Controller(ctx.session_id, policy or PolicyParams(), strict=strict)
        self.violation: ControllerError | None = None
        """The first rule violation seen in strict mode."""
        self._ticker: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        """Set after every input is handled: the next deadline may have moved."""

    async def on_start(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = self.spawn(self._tick_forever(), "ticker")

    async def _tick_forever(self) -> None:
        """A tick exactly when the state machine's next timer comes due (``next_deadline_ms``).

        The timers that compute the deadline are the ones a tick fires, so a tick at a deadline always
        moves it. Between deadlines nothing is timed, so the ticker sleeps until one comes due or an
        input changes the state: an idle session costs no wake-ups (on Ray, a ticking idle session
        host cost 2.6% of a core).
        """
        clock = self.ctx.clock
        while True:
            self._changed.clear()
            deadline = self.controller.next_deadline_ms()
            if deadline is not None and deadline <= clock.now_ms():
                self.emit(Tick, turn_id=self.controller.state.turn_id)
                await self._changed.wait()  # handled: the deadline has moved
                continue
            changed = asyncio.ensure_future(self._changed.wait())
            if deadline is None:
                await changed
                continue
            sleeper = asyncio.ensure_future(clock.sleep_ms(deadline - clock.now_ms()))
            try:
                await asyncio.wait((changed, sleeper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                sleeper.cancel()

    async def handle(self, event: Event) -> None:
        try:
            self._handle(event)
        except ControllerError as exc:
            if self.violation is None:
                self.violation = exc
                self.emit(ErrorEvent, source=self.name, message=f"{RULE_VIOLATION}: {exc}", fatal=True)
            raise
        finally:
            self._changed.set()

    def _handle(self, event: Event) -> None:
        if isinstance(event, PolicyUpdate):  # the actor's input, not the state machine's
            self._update_policy(event)
            return
        actions = self.controller.handle(event, self.ctx.clock.now_ms())
        for action in actions:
            if isinstance(action, StateChanged):
                self.log.info(
                    "state_changed",
                    turn_id=action.turn_id,
                    old=action.old_state,
                    new=action.new_state,
                    reason=action.reason,
                )
            elif isinstance(action, ErrorEvent):
                self.log.error("controller_reset", error=action.message)
            self.ctx.bus.publish(action)

    def _update_policy(self, update: PolicyUpdate) -> None:
        """Apply a live policy update, or refuse all of it (an error event) and keep the parameters."""
        overrides = dict(update.overrides)
        try:
            params = self.controller.params.with_overrides(overrides)
        except ValueError as exc:  # an unknown name, a wrong type, or values the policy refuses
            self.log.warning("policy_update_refused", error=str(exc))
            self.emit(ErrorEvent, source=self.name, message=f"policy update refused: {exc}")
            return
        self.controller.params = params
        self.log.info("policy_updated", **{name: getattr(params, name) for name in overrides})
        self.emit(
            MetricEvent,
            turn_id=self.controller.state.turn_id,
            name="policy_applied",
            value=float(len(overrides)),
            labels=tuple((name, str(getattr(params, name))) for name in sorted(overrides)),
        )
