"""The embedded LLM answers one VAP voice's 18 questions without repeating itself (slow: the real model)."""

from __future__ import annotations

import asyncio

import pytest

from duplexer.actors.models.packages import ModelPackageMissing
from duplexer.bench.replies import conversation_questions, live_variant, run_conversation
from tests.conftest import PHRASES

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")
def test_a_vap_conversation_gets_distinct_replies_and_no_verbatim_repeat() -> None:
    from duplexer.actors.models.llama_llm import LlamaLlm

    try:
        llm = LlamaLlm()
    except ModelPackageMissing as exc:
        pytest.skip(str(exc))
    questions = conversation_questions(PHRASES, "E")
    assert len(questions) == 18
    result = asyncio.run(run_conversation(llm, questions, live_variant(), "E"))
    assert result.verbatim_repeats() == 0
    assert result.distinct() >= 16
    assert all(record.answer for record in result.records)
