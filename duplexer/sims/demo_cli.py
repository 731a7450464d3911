"""`duplexer demo` and `duplexer talk`: real models, real time."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from duplexer.cli_support import add_policy_argument, chosen_policy, fail
from duplexer.runtime.console import progress, say


def _persona(path: Path | None) -> Any:
    from duplexer.sims.persona import load_persona

    return load_persona(path) if path else None


def _registry(args: argparse.Namespace) -> Any:
    toolset = getattr(args, "toolset", None)
    return toolset.registry if toolset is not None else None


def demo_engines(args: argparse.Namespace | None = None) -> tuple[Any, Any]:
    """Load the real models once; returns (engine factory, user-voice synthesizer).

    With ``--llm`` naming a server backend, replies come from that server instead of SmolLM2; engines
    named with ``--vad/--asr/--tts/--turn-detector`` (or a plug-in ``--llm``) replace the real ones.
    """
    from duplexer.actors.engine_choice import chosen_engines, with_engines
    from duplexer.actors.llm_select import LLM_BACKENDS
    from duplexer.actors.models.loading import build_engines, load_models

    chosen = chosen_engines(args, LLM_BACKENDS) if args is not None else {}  # bad names stop before loading
    models = load_models()
    server_llm = None
    llm_name = getattr(args, "llm", "local") if args is not None else "local"
    if args is not None and llm_name in LLM_BACKENDS and llm_name != "local":
        from dataclasses import replace

        from duplexer.actors.llm_select import build_llm_engine, llm_config_from_args

        config = llm_config_from_args(args)
        toolset = getattr(args, "toolset", None)
        if toolset is not None:  # OpenAI-compatible servers get the tools in each request
            tools = tuple(toolset.openai_tools())
            config = replace(config, openai=replace(config.openai, tools=tools, tool_choice=toolset.tool_choice))
            if config.sglang.prompt_format == "model":  # in-process SGLang: the model's template shows them
                config = replace(config, sglang=replace(config.sglang, tools=tools))
        server_llm = build_llm_engine(config)

    def make_engines(clock: Any, sink: Any) -> Any:
        engines = build_engines(clock, sink)
        if server_llm is not None:
            engines.llm = server_llm
        return engines

    def synthesize_user(text: str) -> bytes:
        from duplexer.sims.demo import USER_LENGTH_SCALE

        return models.tts.synthesize_blocking(text, length_scale=USER_LENGTH_SCALE)

    return with_engines(make_engines, chosen), synthesize_user


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The persona and the loaded models: (persona or None, engine factory, user-voice synthesizer).

    Sets ``args.toolset``: the tools of ``--tools FILE``, else the persona's (or None).
    Raises ModelPackageMissing, PersonaError or ValueError, each with a one-line message.
    """
    from duplexer.actors.engine_choice import chosen_engines
    from duplexer.actors.llm_select import LLM_BACKENDS
    from duplexer.actors.tool_config import load_tools

    persona = _persona(args.persona)
    chosen_engines(args, LLM_BACKENDS)  # a bad engine name stops the command before any model loads
    args.toolset = load_tools(args.tools) if args.tools else (persona.toolset() if persona else None)
    progress("loading models (Silero VAD, Whisper tiny.en, SmolLM2-135M, Piper joe)...")
    make_engines, synthesize = demo_engines(args)
    return persona, make_engines, synthesize


def _demo(args: argparse.Namespace) -> int:
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.runtime.logging import configure_logging
    from duplexer.sims.demo import run_demo, table, write_outputs
    from duplexer.sims.persona import PersonaError

    configure_logging(args.log_level)
    try:
        policy = chosen_policy(args)
        persona, make_engines, synthesize = _setup(args)
    except (ModelPackageMissing, PersonaError, ValueError) as exc:
        return fail(str(exc))
    progress("running the conversation in real time, with speculation on, then off...")
    on, _, records, summary = asyncio.run(
        run_demo(make_engines, synthesize, persona, compare=not args.no_compare, policy=policy, tools=_registry(args))
    )
    write_outputs(args.out, "demo", on, records, summary)
    say(table(records, summary))
    say(f"wrote {args.out / 'demo.wav'}, {args.out / 'demo.json'} and {args.out / 'demo_timeline.png'}")
    return 0


def _talk(args: argparse.Namespace) -> int:
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.protocols.wav import WavError, read_wav
    from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
    from duplexer.runtime.logging import configure_logging
    from duplexer.runtime.untrusted import slug
    from duplexer.sims.demo import demo_config, recording_scenario, summarize_demo, table, turn_records, write_outputs
    from duplexer.sims.live import run_live
    from duplexer.sims.persona import PersonaError

    configure_logging(args.log_level)
    try:
        chosen_policy(args)  # a bad preset stops the command before any model loads
    except ValueError as exc:
        return fail(str(exc))
    if args.mic:
        return _talk_mic(args)
    if args.file is None:
        return fail("talk needs a wav file, or --mic")
    stem = slug(args.file.stem, "recording")  # output names: file-safe and short, whatever the input is called
    try:
        pcm = read_wav(args.file, INPUT_SAMPLE_RATE_HZ, args.user_channel)
        scenario, clips = recording_scenario(pcm, stem, source=str(args.file))
        persona, make_engines, _ = _setup(args)
    except (WavError, ModelPackageMissing, PersonaError, ValueError) as exc:
        return fail(str(exc))
    config = demo_config(persona, chosen_policy(args), _registry(args))
    prompt = persona.system_prompt if persona else None
    run = asyncio.run(run_live(scenario, clips, make_engines, config, prompt, recording=pcm))
    records = turn_records(run, None)
    summary = summarize_demo(records, run, None)
    write_outputs(args.out, stem, run, records, summary)
    say(table(records, summary))
    for error in summary["errors"]:
        progress(f"duplexer: warning: {error}")
    say(f"wrote {args.out / (stem + '.wav')}, .json and _timeline.png")
    return 0


def _talk_mic(args: argparse.Namespace) -> int:
    """Live talk through PyAudio until Ctrl-C; writes OUT/mic.wav, .json and _timeline.png like talk."""
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.protocols.microphone import MicrophoneUnavailable, open_devices
    from duplexer.sims.demo import demo_config, summarize_demo, table, talk_live, turn_records, write_outputs
    from duplexer.sims.persona import PersonaError

    if args.file is not None:
        return fail("talk takes a wav file or --mic, not both")
    if args.user_channel is not None:
        return fail("--user-channel chooses a channel of a wav file; the microphone has one")
    try:
        devices = open_devices()
    except MicrophoneUnavailable as exc:
        return fail(str(exc))
    try:
        try:
            persona, make_engines, _ = _setup(args)
        except (ModelPackageMissing, PersonaError, ValueError) as exc:
            return fail(str(exc))
        speaker = "the default output" if devices.output_info is not None else "no speaker (bot audio only recorded)"
        progress(f"listening on {devices.input_name!r}, replying through {speaker}; Ctrl-C ends")
        prompt = persona.system_prompt if persona else None
        greeting = persona.greeting if persona else ""
        try:
            config = demo_config(persona, chosen_policy(args), _registry(args))
            run = asyncio.run(talk_live(devices, make_engines, config, prompt, greeting))
        except MicrophoneUnavailable as exc:
            return fail(str(exc))
    finally:
        devices.close()
    records = turn_records(run, None)
    summary = summarize_demo(records, run, None)
    write_outputs(args.out, "mic", run, records, summary)
    say(table(records, summary))
    say(f"wrote {args.out / 'mic.wav'}, .json and _timeline.png")
    return 0


def register(commands: Any) -> None:
    from duplexer.actors.engine_choice import add_engine_arguments
    from duplexer.actors.llm_select import add_llm_arguments
    from duplexer.actors.tool_config import add_tools_argument
    from duplexer.protocols.wav import WAV_LIMITS

    demo = commands.add_parser(
        "demo",
        help="a real conversation with real models on this CPU (the main job)",
        description="Speak a scripted multi-turn conversation with Piper (a question needing a real "
        "answer, a mid-turn pause, a barge-in) and stream it in real time through the whole pipeline "
        "with real models: Silero VAD, Whisper tiny.en, SmolLM2-135M and Piper. Runs it with "
        "speculation on and off to measure the latency it saves. Writes OUT/demo.wav (user left, "
        "bot right), OUT/demo.json and OUT/demo_timeline.png.",
    )
    demo.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    demo.add_argument("--persona", type=Path, help="persona YAML (see personas/)")
    demo.add_argument("--no-compare", action="store_true", help="skip the speculation-off run")
    demo.add_argument("--log-level", default="WARNING", help="structured log level (default: WARNING)")
    add_policy_argument(demo)
    add_llm_arguments(demo)
    add_engine_arguments(demo)
    add_tools_argument(demo)
    demo.set_defaults(handler=_demo)

    talk = commands.add_parser(
        "talk",
        help="converse with a recorded user (a wav file) or the microphone",
        description="Converse with a recorded user: the wav (any rate or channel count) is streamed "
        "in real time as the microphone, to its end, and the session goes on until the reply in "
        "progress has been played (a bounded wait; a warning says when it ran out); turns are split "
        "at long silences. Writes OUT/NAME.wav, .json and _timeline.png like the demo. With --mic, "
        f"talk live through PyAudio. The wav: {WAV_LIMITS}; a silent one is refused.",
    )
    talk.add_argument("file", type=Path, nargs="?", help="the user's recording (wav)")
    talk.add_argument(
        "--mic",
        action="store_true",
        help="talk live through the default microphone and speaker (needs PyAudio: the 'mic' extra); "
        "Ctrl-C ends and writes OUT/mic.wav, .json and _timeline.png",
    )
    talk.add_argument(
        "--user-channel",
        choices=["left", "right"],
        default=None,
        help="take the user from this channel of a two-party (stereo) recording, leaving the partner "
        "on the other out (default: mix all channels)",
    )
    talk.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out)")
    talk.add_argument(
        "--persona", type=Path, help="persona YAML (see personas/); its greeting is not spoken over a recording"
    )
    talk.add_argument("--log-level", default="WARNING", help="structured log level (default: WARNING)")
    add_policy_argument(talk)
    add_llm_arguments(talk)
    add_engine_arguments(talk)
    add_tools_argument(talk)
    talk.set_defaults(handler=_talk)
