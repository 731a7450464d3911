"""The turn-taking policy's parameters and their named presets: every threshold the rules read.

The rules themselves are :mod:`duplexer.policies.rules`; the state machine that applies them is
:mod:`duplexer.policies.controller`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from duplexer.policies.table import PolicyTable


@dataclass(frozen=True)
class PolicyParams:
    """Every turn-taking threshold, in one place. The paper gives none, so all are configuration.

    The defaults are the live-call policy, the one every command runs unless a scenario or
    ``--policy NAME`` chooses another (:data:`POLICY_PRESETS`): the simulator scores what a live
    call does.

    A policy plug-in subclasses it: its own parameters are the subclass's fields (the presets' and
    the overrides' machinery applies to them as to these), and its rules are the subclass's
    :attr:`table`, so the rules travel with the parameters wherever a policy goes (scenarios,
    sweeps, live updates, Ray hosts). See docs/plugins.md."""

    table: ClassVar[PolicyTable | None] = None
    """The transition table and timers these parameters are read by; None: the built-in rules
    (:data:`duplexer.policies.rules.BUILT_IN_TABLE`)."""

    pause_ms: float = 150.0
    """Silence after speech that enters UserPaused and starts a speculative reply. The VAD's stop and
    the final transcript come ~150-250 ms after the user stops, so a longer pause only delays the
    speculative reply."""
    end_of_turn_ms: float = 700.0
    """Silence that ends the user's turn and commits a reply, when no detector speaks."""
    end_of_turn_min_ms: float = 500.0
    """Shortest end-of-turn silence a confident end-of-turn detector (p=1) may ask for."""
    end_of_turn_unsure_ms: float = 2200.0
    """The silence an undecided detector (p=0.5) asks for (capped at end_of_turn_max_ms); between
    p=0.5 and p=1 the wait falls linearly to end_of_turn_min_ms. Chosen with ``duplexer bench eot``
    on VAP voices A, B, C (Smart Turn fused with the text detector): the least dead air at true ends
    that takes over at most 5% of mid-turn hesitations (docs/benchmarks.md)."""
    end_of_turn_max_ms: float = 2200.0
    """Longest end-of-turn silence a doubtful end-of-turn detector (p=0) may ask for."""
    min_barge_in_ms: float = 500.0
    """User speech during bot speech needed to interrupt; shorter speech is a backchannel."""
    backchannel_pause_playout: bool = True
    """Hold bot audio while overlapping speech is still shorter than min_barge_in_ms: the bot falls
    silent the moment user speech is heard (a fast audible stop) and stops for good only after
    min_barge_in_ms of it."""
    resume_after_ms: float = 400.0
    """With backchannel_pause_playout: held bot audio resumes only after this much silence once a short
    overlap ends, longer than the pause at a comma. Speech within it continues the overlap, and all of
    its speech counts towards min_barge_in_ms, so an interruption with a pause in it ("Wait, | tell me
    ...") is not talked into."""
    min_speech_probability: float = 0.5
    """VAD speech onsets below this probability are ignored."""
    speculation: bool = True
    """Start replies during user pauses (off: replies start only at end of turn)."""
    max_speculative_calls: int = 3
    """Speculative replies allowed per user turn."""
    speculative_tts: bool = True
    """Synthesize a speculative reply's audio before it is committed, so a committed reply plays at once
    (off: TTS waits for the commit, saving work on discarded replies)."""
    asr_final_timeout_ms: float = 2000.0
    """How long past end of turn to wait for a late final transcript before replying anyway."""
    onset_hold_max_ms: float = 250.0
    """Longest a VAD onset candidate (raw speech probability up, speech not yet confirmed) holds back
    a commit: a real onset is confirmed within the VAD's onset lag (~60-100 ms); steady noise near the
    candidate threshold must not hold the reply for ever."""
    resume_after_commit_ms: float = 500.0
    """User speech that starts within this long after a commit continues the user's turn: the reply
    stops at once and is taken back (no min_barge_in_ms of talking over the user)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"policy parameter {f.name} must be >= 0, got {value}")
        if not 0 < self.pause_ms <= self.end_of_turn_ms:
            raise ValueError(
                f"policy parameter pause_ms ({self.pause_ms}) must be > 0 and <= end_of_turn_ms ({self.end_of_turn_ms})"
            )
        if self.end_of_turn_unsure_ms < self.end_of_turn_min_ms:
            raise ValueError(
                f"policy parameter end_of_turn_unsure_ms ({self.end_of_turn_unsure_ms}) must be >= "
                f"end_of_turn_min_ms ({self.end_of_turn_min_ms})"
            )
        if not self.end_of_turn_min_ms <= self.end_of_turn_ms <= self.end_of_turn_max_ms:
            raise ValueError(
                "policy parameters need end_of_turn_min_ms <= end_of_turn_ms <= end_of_turn_max_ms, "
                f"got {self.end_of_turn_min_ms}, {self.end_of_turn_ms}, {self.end_of_turn_max_ms} "
                "(a shorter end_of_turn_ms needs end_of_turn_min_ms set no higher)"
            )
        if not 0.0 <= self.min_speech_probability <= 1.0:
            raise ValueError("policy parameter min_speech_probability must be within [0, 1]")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, overrides: Mapping[str, object]) -> PolicyParams:
        """These parameters with ``overrides`` applied; a ValueError (one line, naming the field) refuses
        an unknown name, a value of the wrong type (a bool for a number, a number for a bool), a
        non-finite or non-integral number where one does not fit, or values the policy refuses."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown policy parameter {name!r} (known: {', '.join(sorted(known))})")
            kind = str(known[name].type)  # "bool", "int" or "float" (annotations are strings here)
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"policy parameter {name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"policy parameter {name} must be a number, got {value!r}")
            elif not math.isfinite(value):
                raise ValueError(f"policy parameter {name} must be finite, got {value!r}")
            elif kind == "int":
                if value != round(value):
                    raise ValueError(f"policy parameter {name} must be an integer, got {value!r}")
                value = int(value)
            changes[name] = value
        return replace(self, **changes)

    def effective_end_of_turn_ms(self, probability: float | None) -> float:
        """End-of-turn silence for a detector's probability: no estimate -> end_of_turn_ms; p=0 -> max,
        p=0.5 -> unsure (capped at max), p=1 -> min, linear in between."""
        if probability is None:
            return self.end_of_turn_ms
        p = min(1.0, max(0.0, probability))
        unsure = min(self.end_of_turn_unsure_ms, self.end_of_turn_max_ms)
        if p >= 0.5:
            return unsure + (p - 0.5) * 2.0 * (self.end_of_turn_min_ms - unsure)
        return self.end_of_turn_max_ms + p * 2.0 * (unsure - self.end_of_turn_max_ms)


LIVE_CALL_POLICY = PolicyParams()
"""The live-call policy: the defaults themselves (the name stays for code that asks for it)."""

CLASSIC_POLICY = PolicyParams(
    pause_ms=200.0,
    end_of_turn_min_ms=300.0,
    end_of_turn_unsure_ms=700.0,
    end_of_turn_max_ms=1500.0,
    backchannel_pause_playout=False,
    resume_after_ms=0.0,
    onset_hold_max_ms=0.0,
    resume_after_commit_ms=0.0,
)
"""The first defaults, before the live-call values became them: bot audio plays on through
overlapping speech until min_barge_in_ms of it stops the reply, speculation waits 200 ms of silence,
a confident end-of-turn detector may commit after 300 ms, and a commit neither waits for a VAD onset
candidate nor is taken back when the user goes on. For comparing with earlier figures."""

FAST_POLICY = PolicyParams(end_of_turn_min_ms=300.0, end_of_turn_unsure_ms=1500.0, end_of_turn_max_ms=2500.0)
"""The live policy with a quicker end of turn: the knee of ``duplexer bench eot``'s curve for the
fused detector (about 550 ms of silence at p50 of finished questions on VAP voices E, F, against
~850 for ``live``), at the price of taking over ~12% of mid-turn hesitations instead of ~4%."""

DEFAULT_PRESET = "live"
"""The preset every command runs unless ``--policy NAME`` chooses another: :class:`PolicyParams`'s
own defaults."""

POLICY_PRESETS: dict[str, PolicyParams] = {
    DEFAULT_PRESET: LIVE_CALL_POLICY,
    "fast": FAST_POLICY,
    "classic": CLASSIC_POLICY,
}
"""Named parameter sets, selected with ``--policy NAME`` on every command that runs a policy."""

PRESET_ALIASES: dict[str, str] = {"default": DEFAULT_PRESET}
"""Other names a preset answers to: ``default`` is whatever the default is."""


def preset(name: str) -> PolicyParams:
    """The preset called ``name``; a ValueError listing the names when there is none."""
    try:
        return POLICY_PRESETS[PRESET_ALIASES.get(name, name)]
    except KeyError:
        known = ", ".join([*POLICY_PRESETS, *PRESET_ALIASES])
        raise ValueError(f"unknown policy preset {name!r} (known: {known})") from None
