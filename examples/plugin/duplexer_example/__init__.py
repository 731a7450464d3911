"""An example duplexer plug-in package: one engine (``--tts example-tone``) and one policy
(``--policy example``). The walk-through is duplexer's docs/plugins.md."""
