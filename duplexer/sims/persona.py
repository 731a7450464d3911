"""Personas for role-play: a name, a system prompt, default TTS tags and a greeting, from YAML."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PersonaError(ValueError):
    """A persona file is unusable; the message names the file and field."""


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    tts_instructions: tuple[str, ...] = ()
    """Step-Audio-style tags for every reply, e.g. [slow]; the TTS applies what it can render."""
    greeting: str = ""


def load_persona(path: Path) -> Persona:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise PersonaError(f"{path}: not valid YAML") from None
    try:
        return Persona.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise PersonaError(f"{path}: {where}: {msg}") from None
