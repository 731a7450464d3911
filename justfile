# Developer shortcuts. The README's two commands need nothing but Python and pip.

venv := ".venv/bin"

# set up the virtualenv with dev tools
setup:
    python3 -m venv .venv && {{venv}}/pip install -e '.[dev]'

# the whole test suite (what CI runs)
test *ARGS:
    {{venv}}/python -m pytest {{ARGS}}

# lint, format check and types
check:
    {{venv}}/ruff check duplexer tests
    {{venv}}/ruff format --check duplexer tests
    {{venv}}/mypy duplexer

# replay the shipped scenarios
sim *ARGS:
    {{venv}}/duplexer sim scenarios/ --report out/ {{ARGS}}

# sweep pause and end-of-turn thresholds
sweep:
    {{venv}}/duplexer sim scenarios/ --sweep end_of_turn_ms=650:1250:100 --sweep pause_ms=100:300:100 --report out/sweep

# run a benchmark: just bench bus | just bench kernels
bench NAME *ARGS:
    {{venv}}/duplexer bench {{NAME}} {{ARGS}}
