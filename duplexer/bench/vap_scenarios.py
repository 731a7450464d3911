"""Build simulator scenarios from the VAP phrase recordings: real word timings, real pauses.

Speech segments come from the recording's frame energy (:mod:`duplexer.sims.speech_segments`);
word onsets come from the annotation. Run ``python -m duplexer.bench.vap_scenarios
../shared/data/vap_phrases scenarios/`` to regenerate the shipped ``vap_*.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from duplexer.sims.speech_segments import ENERGY_FRAME_MS, speech_segments

PAIRS: tuple[tuple[str, str, str], ...] = (
    # (phrase, voice of the short question, voice of the long follow-up)
    ("basketball", "female_en-US-Wavenet-C", "male_en-US-Wavenet-A"),
    ("bike", "male_en-US-Wavenet-B", "female_en-US-Wavenet-E"),
    ("drive", "female_en-US-Wavenet-F", "male_en-US-Wavenet-B"),
    ("experiment", "male_en-US-Wavenet-A", "female_en-US-Wavenet-C"),
    ("student", "female_en-US-Wavenet-E", "female_en-US-Wavenet-F"),
    ("work", "male_en-US-Wavenet-B", "male_en-US-Wavenet-A"),
)


def say_step(root: Path, name: str) -> dict[str, Any]:
    """A `say` step with the recording's segments and word onsets."""
    note = json.loads((root / "annotation" / f"{name}.json").read_text())
    segs = speech_segments(root / "audio" / f"{name}.wav")
    words = [(round(start * 1000.0, 1), word) for start, word in zip(note["starts"], note["words"], strict=True)]
    return {
        "say": note["text"],
        "segments": [
            {
                "start_ms": s,
                "end_ms": e,
                "words": [[t, w] for t, w in words if s - ENERGY_FRAME_MS <= t < e],
            }
            for s, e in segs
        ],
    }


def build(root: Path) -> dict[str, dict[str, Any]]:
    scenarios = {}
    for phrase, short_voice, long_voice in PAIRS:
        name = f"vap_{phrase}"
        scenarios[name] = {
            "name": name,
            "description": (
                f"Real speech timings (VAP phrases, MIT): the complete '{phrase}' question, the bot's "
                "answer, then the longer form of the question as a follow-up."
            ),
            "script": [
                say_step(root, f"{phrase}_short_{short_voice}"),
                {
                    **say_step(root, f"{phrase}_long_{long_voice}"),
                    "start": {"after": "bot_done", "gap_ms": 500},
                },
            ],
        }
    return scenarios


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m duplexer.bench.vap_scenarios VAP_PHRASES_DIR OUT_DIR\n")
        return 2
    root, out = Path(argv[0]), Path(argv[1])
    for name, scenario in build(root).items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False, width=100))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
