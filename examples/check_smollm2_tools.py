"""Does the embedded SmolLM2-135M write tool calls? Prints each reply and the count.

Asks five weather questions at two temperatures with the tool prompt the pipeline gives a
model (duplexer.actors.tool_registry.ToolRegistry.prompt). Run: python examples/check_smollm2_tools.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tools import build_registry

from duplexer.actors.context import DEFAULT_SYSTEM_PROMPT
from duplexer.actors.models.loading import load_models

QUESTIONS = (
    "What is the weather like in Paris today?",
    "Can you check the weather in London?",
    "Is it raining in Tokyo right now?",
    "What's the weather in Paris?",
    "Tell me the current weather in London please.",
)


def main() -> int:
    model = load_models().llm.model
    system = DEFAULT_SYSTEM_PROMPT + "\n\n" + build_registry().prompt()
    hits = 0
    for question in QUESTIONS:
        for temperature in (0.0, 0.3):
            out = model.create_chat_completion(
                messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                max_tokens=80,
                temperature=temperature,
                repeat_penalty=1.3,
            )
            text = out["choices"][0]["message"]["content"]
            called = "<tool_call>" in text and "get_weather" in text
            hits += called
            print(json.dumps({"question": question, "temperature": temperature, "tool_call": called, "reply": text}))
    print(f"tool calls in {hits} of {len(QUESTIONS) * 2} replies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
