"""Hypothesis drives the pure controller with any interleaving of speech, transcripts, playout and time.

The test plays the environment: a user who may speak at any moment, an ASR whose
finals arrive late, replies that become ready, and a playout that starts, ends or
is stopped as the controller asks. Invariants hold after every step.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from duplexer.policies.controller import ClockWentBackwards, Controller, Phase, PolicyParams, next_deadline_ms, step
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.runtime.events import (
    FRAME_MS,
    AsrFinal,
    AsrPartial,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    Event,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    ResumePlayout,
    StartPlayout,
    StartReply,
    StopPlayout,
    Tick,
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)

SID = "s"
TICK_MS = float(FRAME_MS)
"""This test lets time pass a frame at a time, ticking each step (the actor ticks at deadlines)."""
WORDS = st.sampled_from(["hello", "what", "is", "the", "time", "please", "mm-hmm", ""])


def ev(kind: type[Event], **fields: object) -> Event:
    return kind(session_id=SID, ts_ms=0.0, **fields)  # type: ignore[arg-type]


class ControllerMachine(RuleBasedStateMachine):
    @initialize(
        pause_ms=st.sampled_from([100.0, 200.0, 300.0]),
        eot_extra_ms=st.sampled_from([0.0, 200.0, 500.0]),
        min_barge_in_ms=st.sampled_from([0.0, 200.0, 400.0, 600.0]),
        max_spec=st.integers(0, 3),
        speculation=st.booleans(),
        backchannel_pause=st.booleans(),
        resume_after_ms=st.sampled_from([0.0, 200.0, 400.0]),
    )
    def setup(
        self,
        pause_ms: float,
        eot_extra_ms: float,
        min_barge_in_ms: float,
        max_spec: int,
        speculation: bool,
        backchannel_pause: bool,
        resume_after_ms: float,
    ) -> None:
        eot = pause_ms + eot_extra_ms
        self.params = PolicyParams(
            pause_ms=pause_ms,
            end_of_turn_ms=eot,
            end_of_turn_min_ms=min(300.0, eot),
            end_of_turn_max_ms=max(1500.0, eot),
            min_barge_in_ms=min_barge_in_ms,
            max_speculative_calls=max_spec,
            speculation=speculation,
            backchannel_pause_playout=backchannel_pause,
            resume_after_ms=resume_after_ms,
            asr_final_timeout_ms=1000.0,
        )
        self.c = Controller(SID, self.params)
        self.now = 0.0
        self.last_state_ms = 0.0
        self.last_action_ts = 0.0
        self.segment = 0
        self.speaking_since: float | None = None
        self.spoke_until = float("-inf")
        self.finals_due: list[int] = []
        self.started: dict[str, StartReply] = {}
        self.committed: dict[int, list[str]] = {}
        self.committed_ids: set[str] = set()
        self.cancelled: set[str] = set()
        self.taken_back: set[str] = set()
        """Committed replies cancelled because the user went on just after the commit."""
        self.playout_requested: set[str] = set()
        self.playing: str | None = None
        self.play_started_at = 0.0
        self.stops_due: list[str] = []
        self.ended: set[str] = set()
        self.candidate_since: float | None = None

    # ---------------------------------------------------------------- plumbing

    def apply(self, event: Event) -> None:
        actions = self.c.handle(event, self.now)
        for action in actions:
            assert action.ts_ms >= self.last_action_ts, "action timestamps went backwards"
            self.last_action_ts = action.ts_ms
            if isinstance(action, StartReply):
                assert action.reply_id not in self.started, "reply id reused"
                self.started[action.reply_id] = action
            elif isinstance(action, CommitReply):
                assert action.turn_id is not None
                started = self.started[action.reply_id]
                assert started.user_text == action.user_text, "committed a reply made for other words"
                if self.candidate_since is not None:
                    assert self.now - self.candidate_since >= self.params.onset_hold_max_ms - 1e-6, (
                        f"committed {self.now - self.candidate_since} ms into an onset candidate"
                    )
                self.committed.setdefault(action.turn_id, []).append(action.reply_id)
                self.committed_ids.add(action.reply_id)
            elif isinstance(action, CancelReply):
                self.cancelled.add(action.reply_id)
                if action.reason == RESUMED_AFTER_COMMIT:
                    assert action.reply_id in self.committed_ids, "only a committed reply is taken back"
                    self.taken_back.add(action.reply_id)
                if self.playing == action.reply_id:  # the playout actor stops a cancelled reply too
                    self._stop_playing(action.reply_id)
            elif isinstance(action, ResumePlayout):
                assert self.speaking_since is None, "held bot audio resumed while the user speaks"
                assert self.now - self.spoke_until >= self.params.resume_after_ms - 1e-6, (
                    f"held bot audio resumed {self.now - self.spoke_until} ms after the user's speech "
                    f"(resume_after_ms {self.params.resume_after_ms})"
                )
            elif isinstance(action, StartPlayout):
                self.playout_requested.add(action.reply_id)
            elif isinstance(action, StopPlayout):
                self.playout_requested.discard(action.reply_id)
                if self.playing == action.reply_id:
                    self._stop_playing(action.reply_id)
                else:
                    self.stops_due.append(action.reply_id)

    def _stop_playing(self, reply_id: str) -> None:
        self.playing = None
        self.ended.add(reply_id)
        self.stops_due.append(reply_id)

    # ---------------------------------------------------------------- the environment

    @rule(frames=st.integers(1, 30))
    def time_passes(self, frames: int) -> None:
        for _ in range(frames):
            self.now += TICK_MS
            self.apply(ev(Tick))

    @precondition(lambda self: self.speaking_since is None)
    @rule(probability=st.sampled_from([0.3, 0.9]))
    def user_starts_speaking(self, probability: float) -> None:
        self.segment += 1
        if self.candidate_since is not None:  # confirmed or not, the VAD's candidate run ends here
            self.candidate_since = None
            self.apply(ev(VadOnsetCandidate, active=False, probability=probability, since_ms=self.now))
        if probability >= self.params.min_speech_probability:
            self.speaking_since = self.now
        self.apply(ev(VadSpeechStart, segment_id=self.segment, probability=probability, speech_start_ms=self.now))
        if probability < self.params.min_speech_probability:
            self.apply(ev(VadSpeechStop, segment_id=self.segment, probability=0.1, speech_end_ms=self.now))
        else:
            self.finals_due.append(self.segment)

    @precondition(lambda self: self.speaking_since is None and not self.finals_due)
    @rule(words=st.lists(WORDS, min_size=1, max_size=3), speech_frames=st.integers(1, 40))
    def user_says_a_whole_turn(self, words: list[str], speech_frames: int) -> None:
        """A common path made likely: speak, stop, get the final, wait out the end of turn."""
        self.user_starts_speaking(0.9)
        self.time_passes(speech_frames)
        self.user_stops_speaking()
        self.transcript_arrives(words, partial=False)
        self.time_passes(int(self.params.end_of_turn_ms // TICK_MS) + 2)

    @precondition(lambda self: self.speaking_since is None)
    @rule(active=st.booleans())
    def vad_onset_candidate(self, active: bool) -> None:
        """The VAD's raw probability rises (maybe speech) or falls back, with no speech confirmed."""
        if active == (self.candidate_since is not None):
            return
        since = self.now if active else self.candidate_since
        assert since is not None
        self.candidate_since = self.now if active else None
        self.apply(ev(VadOnsetCandidate, active=active, probability=0.4, since_ms=since))

    @precondition(lambda self: self.speaking_since is not None)
    @rule()
    def user_stops_speaking(self) -> None:
        self.speaking_since = None
        self.spoke_until = self.now
        self.apply(ev(VadSpeechStop, segment_id=self.segment, probability=0.05, speech_end_ms=self.now))

    @precondition(lambda self: bool(self.finals_due))
    @rule(words=st.lists(WORDS, max_size=3), partial=st.booleans())
    def transcript_arrives(self, words: list[str], partial: bool) -> None:
        segment = self.finals_due[0]
        if partial:
            self.apply(ev(AsrPartial, segment_id=segment, text=" ".join(words)))
            return
        if segment == self.segment and self.speaking_since is not None:
            return  # a final comes only after its segment ended
        self.finals_due.pop(0)
        self.apply(ev(AsrFinal, segment_id=segment, text=" ".join(words)))

    @rule(probability=st.floats(0, 1))
    def end_of_turn_detector(self, probability: float) -> None:
        self.apply(ev(EndOfTurnProbability, probability=probability))

    @precondition(lambda self: self.playing is None and bool(self.playout_requested - self.ended - self.cancelled))
    @rule(data=st.data())
    def playout_starts(self, data: st.DataObject) -> None:
        reply_id = data.draw(st.sampled_from(sorted(self.playout_requested - self.ended - self.cancelled)))
        self.playing, self.play_started_at = reply_id, self.now
        self.apply(ev(PlayoutStarted, reply_id=reply_id))

    @precondition(lambda self: self.playing is not None)
    @rule()
    def playout_finishes(self) -> None:
        reply_id = self.playing
        assert reply_id is not None
        self.playing = None
        self.ended.add(reply_id)
        self.playout_requested.discard(reply_id)
        self.apply(ev(PlayoutDone, reply_id=reply_id, played_ms=self.now - self.play_started_at))

    @precondition(lambda self: bool(self.stops_due))
    @rule()
    def playout_reports_stop(self) -> None:
        reply_id = self.stops_due.pop(0)
        self.apply(ev(PlayoutStopped, reply_id=reply_id, played_ms=0.0))

    @rule(kind=st.sampled_from([PlayoutStarted, PlayoutDone, PlayoutStopped]))
    def stale_event_for_unknown_reply(self, kind: type[Event]) -> None:
        fields: dict[str, object] = {"reply_id": "nobody"}
        if kind in (PlayoutDone, PlayoutStopped):
            fields["played_ms"] = 0.0
        self.apply(ev(kind, **fields))

    # ---------------------------------------------------------------- invariants

    @invariant()
    def at_most_one_committed_reply_per_turn(self) -> None:
        for turn_id, replies in self.committed.items():
            standing = [r for r in replies if r not in self.taken_back]
            assert len(standing) <= 1, f"turn {turn_id} committed {replies}, taken back {self.taken_back}"

    @invariant()
    def every_reply_is_live_committed_or_cancelled(self) -> None:
        live = self.c.state.reply
        pending = [r for r in self.started if r not in self.committed_ids and r not in self.cancelled]
        assert len(pending) <= 1, f"several uncommitted replies still open: {pending}"
        if pending:
            assert live is not None and live.reply_id == pending[0], "an open reply was forgotten"

    @invariant()
    def speculation_is_cancelled_while_the_user_speaks(self) -> None:
        reply = self.c.state.reply
        if self.c.phase is Phase.USER_SPEAKING:
            assert reply is None, f"reply {reply} still open while the user speaks"

    @invariant()
    def barge_in_stops_playout_in_time(self) -> None:
        if self.playing is None or self.speaking_since is None:
            return
        overlap_since = max(self.speaking_since, self.play_started_at)
        limit = self.params.min_barge_in_ms + TICK_MS
        assert self.now - overlap_since <= limit, (
            f"bot still playing {self.now - overlap_since} ms into user speech (limit {limit})"
        )

    @invariant()
    def a_tick_at_the_next_deadline_always_acts(self) -> None:
        """The timers that give the deadline are the ones a tick fires: a driver ticking at it never spins."""
        deadline = self.c.next_deadline_ms()
        if deadline is None:
            return
        at_ms = max(deadline, self.c.state.now_ms)
        after, _ = step(self.c.state, ev(Tick), at_ms, self.params)
        moved = after.phase is not self.c.state.phase or next_deadline_ms(after, self.params) != deadline
        assert moved, f"a tick at the deadline {deadline} ms in {self.c.phase} changed nothing"

    @invariant()
    def controller_time_is_the_time_of_the_last_event(self) -> None:
        assert self.c.state.now_ms == self.now, f"controller at {self.c.state.now_ms} ms, events at {self.now} ms"
        assert self.c.state.now_ms >= self.last_state_ms, "controller time went backwards"
        self.last_state_ms = self.c.state.now_ms

    def teardown(self) -> None:
        if not hasattr(self, "c"):
            return
        # Quiesce: the user stops, transcripts land, time passes, playout runs to its end.
        if self.speaking_since is not None:
            self.user_stops_speaking()
        while self.finals_due:
            self.apply(ev(AsrFinal, segment_id=self.finals_due.pop(0), text="done"))
        for _ in range(4):
            self.time_passes(int(self.params.end_of_turn_max_ms // TICK_MS) + 2)
            while self.stops_due:
                self.playout_reports_stop()
            if self.playing is None and self.playout_requested - self.ended - self.cancelled:
                self.playout_starts_for_teardown()
            if self.playing is not None:
                self.playout_finishes()
        assert self.c.phase is Phase.SILENCE, f"did not settle: {self.c.phase}"
        unresolved = [r for r in self.started if r not in self.committed_ids and r not in self.cancelled]
        assert not unresolved, f"speculative replies neither committed nor cancelled: {unresolved}"

    def playout_starts_for_teardown(self) -> None:
        reply_id = sorted(self.playout_requested - self.ended - self.cancelled)[0]
        self.playing, self.play_started_at = reply_id, self.now
        self.apply(ev(PlayoutStarted, reply_id=reply_id))


ControllerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestControllerInvariants = ControllerMachine.TestCase


def test_time_going_backwards_is_refused() -> None:
    c = Controller(SID)
    c.handle(ev(Tick), 100.0)
    try:
        c.handle(ev(Tick), 50.0)
    except ClockWentBackwards as exc:
        assert "backwards" in str(exc)
    else:
        raise AssertionError("an event earlier than the last was accepted")
