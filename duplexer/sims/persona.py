"""Personas for role-play: a name, a system prompt, default TTS tags and a greeting, from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from duplexer.actors.tool_config import ToolConfigError, Toolset, tools_from_persona


class PersonaError(ValueError):
    """A persona file is unusable; the message names the file and field."""


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    tts_instructions: tuple[str, ...] = ()
    """Step-Audio-style tags for every reply, e.g. [slow]; the TTS applies what it can render."""
    greeting: str = ""
    tools: str | dict[str, Any] | None = None
    """The tools the persona may call: a tools file (relative to the persona) or a tools section inline."""
    _path: Path = PrivateAttr(default=Path("persona.yaml"))

    def toolset(self) -> Toolset | None:
        """The persona's tools, imported; None without ``tools:``. Raises PersonaError naming the field."""
        if self.tools is None:
            return None
        try:
            return tools_from_persona(self.tools, self._path)
        except ToolConfigError as exc:
            raise PersonaError(str(exc)) from None


def load_persona(path: Path) -> Persona:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise PersonaError(f"{path}: not valid YAML") from None
    try:
        persona = Persona.model_validate(data)
        persona._path = path
        return persona
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise PersonaError(f"{path}: {where}: {msg}") from None
