"""Short overlaps under the live-call policy: held bot audio, a pause inside an interruption, resuming."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.policies.controller import LIVE_CALL_POLICY, Controller, Phase, PolicyParams
from duplexer.runtime.events import (
    FRAME_MS,
    AsrFinal,
    CommitReply,
    Event,
    PausePlayout,
    PlayoutStarted,
    ResumePlayout,
    StopPlayout,
    Tick,
    VadSpeechStart,
    VadSpeechStop,
)

S = "s"


class Driver:
    """Plays the environment on a frame clock and keeps every action the controller asked for."""

    def __init__(self, params: PolicyParams) -> None:
        self.c = Controller(S, params)
        self.now = 0.0
        self.segment = 0
        self.actions: list[tuple[float, Event]] = []

    def send(self, kind: type[Event], **fields: object) -> None:
        for action in self.c.handle(kind(session_id=S, ts_ms=self.now, **fields), self.now):  # type: ignore[arg-type]
            self.actions.append((self.now, action))

    def wait(self, ms: float) -> None:
        end = self.now + ms
        while self.now + FRAME_MS <= end + 1e-9:
            self.now += FRAME_MS
            self.send(Tick)

    def speak(self, ms: float) -> None:
        """User speech of ``ms``, announced by the VAD at its onset and at its end."""
        self.segment += 1
        self.send(VadSpeechStart, segment_id=self.segment, probability=0.9, speech_start_ms=self.now)
        self.wait(ms)
        self.send(VadSpeechStop, segment_id=self.segment, probability=0.1, speech_end_ms=self.now)

    def bot_is_talking(self) -> None:
        self.speak(600)
        self.send(AsrFinal, segment_id=self.segment, text="hello there")
        self.wait(self.c.params.end_of_turn_max_ms + FRAME_MS)
        reply_id = next(a.reply_id for _, a in self.actions if isinstance(a, CommitReply))
        self.send(PlayoutStarted, reply_id=reply_id)
        assert self.c.phase is Phase.BOT_REPLYING
        self.actions.clear()

    def times(self, kind: type[Event]) -> list[float]:
        return [t for t, a in self.actions if isinstance(a, kind)]


def test_an_interruption_with_a_pause_in_it_is_not_talked_into() -> None:
    """ "Wait, | tell me ...": the bot holds at "Wait", stays quiet through the comma, stops on "tell"."""
    d = Driver(LIVE_CALL_POLICY)
    d.bot_is_talking()
    wait_at = d.now
    d.speak(300)  # "Wait,"
    d.wait(260)  # the comma
    tell_at = d.now
    d.speak(400)  # "tell me a fun fact"
    assert d.times(PausePlayout) == [wait_at]
    assert d.times(ResumePlayout) == []
    # barge-in once the two stretches of speech reach min_barge_in_ms together
    assert d.times(StopPlayout) == [tell_at + LIVE_CALL_POLICY.min_barge_in_ms - 300]
    assert d.c.phase is Phase.USER_SPEAKING


def test_a_backchannel_resumes_held_audio_after_resume_after_ms_of_silence() -> None:
    d = Driver(LIVE_CALL_POLICY)
    d.bot_is_talking()
    start = d.now
    d.speak(300)  # "mm-hmm"
    stopped_speaking = d.now
    d.wait(LIVE_CALL_POLICY.resume_after_ms + 2 * FRAME_MS)
    assert d.times(PausePlayout) == [start]
    (resumed,) = d.times(ResumePlayout)
    assert resumed - stopped_speaking >= LIVE_CALL_POLICY.resume_after_ms
    assert resumed - stopped_speaking <= LIVE_CALL_POLICY.resume_after_ms + FRAME_MS
    assert d.times(StopPlayout) == []
    assert d.c.phase is Phase.BOT_REPLYING


@settings(max_examples=60, deadline=None)
@given(
    first_ms=st.integers(1, 24).map(lambda n: n * FRAME_MS),
    gap_ms=st.integers(1, 40).map(lambda n: n * FRAME_MS),
    second_ms=st.integers(1, 24).map(lambda n: n * FRAME_MS),
    resume_after_ms=st.sampled_from([0.0, 200.0, 400.0, 600.0]),
)
def test_two_stretches_of_speech_over_held_audio(
    first_ms: float, gap_ms: float, second_ms: float, resume_after_ms: float
) -> None:
    """Within resume_after_ms the stretches are one overlap, whose speech adds up to a barge-in;
    after it the audio has resumed, and each stretch is judged alone."""
    params = PolicyParams(backchannel_pause_playout=True, resume_after_ms=resume_after_ms, min_barge_in_ms=500.0)
    d = Driver(params)
    d.bot_is_talking()
    d.speak(first_ms)
    d.wait(gap_ms)
    d.speak(second_ms)
    d.wait(max(resume_after_ms, FRAME_MS) + FRAME_MS)
    joined = gap_ms < resume_after_ms
    if first_ms >= 500.0:
        expected_stop = True
    elif joined:
        expected_stop = first_ms + second_ms >= 500.0
    else:
        expected_stop = second_ms >= 500.0
    assert bool(d.times(StopPlayout)) == expected_stop, (d.actions, joined)
    assert len(d.times(ResumePlayout)) == (0 if joined or first_ms >= 500.0 else 1) + (0 if expected_stop else 1)
