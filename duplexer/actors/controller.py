"""Controller actor: feeds bus events and timer ticks to the pure turn-taking state machine."""

from __future__ import annotations

import asyncio

from duplexer.policies.controller import CONTROLLER_INPUTS, Controller, PolicyParams
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import Event, StateChanged, Tick

MIN_EARLY_WAKE_MS = 0.5
"""Deadlines nearer than this are left to the next regular tick."""


class ControllerActor(Actor):
    name = "controller"
    subscribes = CONTROLLER_INPUTS

    def __init__(self, ctx: SessionContext, params: PolicyParams | None = None) -> None:
        super().__init__(ctx)
        self.controller = Controller(ctx.session_id, params or PolicyParams())
        self._ticker: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = self.spawn(self._tick_forever(), "ticker")

    async def _tick_forever(self) -> None:
        """A tick every frame, and one exactly at the next timing deadline if that comes sooner."""
        clock, period_ms = self.ctx.clock, self.controller.params.tick_ms
        next_tick_ms = clock.now_ms() + period_ms
        while True:
            deadline = self.controller.next_deadline_ms()
            now_ms = clock.now_ms()
            if next_tick_ms > now_ms + period_ms:  # the session clock was restarted (the Ray executor does, once)
                next_tick_ms = now_ms + period_ms
            wake_ms = next_tick_ms
            if deadline is not None and now_ms + MIN_EARLY_WAKE_MS < deadline < next_tick_ms:
                wake_ms = deadline
            await clock.sleep_ms(wake_ms - now_ms)
            if wake_ms == next_tick_ms:
                next_tick_ms += period_ms
            self.emit(Tick, turn_id=self.controller.state.turn_id)

    async def handle(self, event: Event) -> None:
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
            self.ctx.bus.publish(action)
