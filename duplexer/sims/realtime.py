"""Scenarios in real time, several at once, on either executor (``duplexer sim --executor ray``).

The virtual clock replays a scenario in milliseconds, but only in one process.
Under the Ray executor a session's actors run in other processes, whose clocks
cannot be virtual, so there scenarios play on the wall clock, ``concurrency`` at
a time in one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tqdm import tqdm

from duplexer.policies.controller import PolicyParams
from duplexer.sims.scenario import Scenario
from duplexer.sims.simulator import SessionMaker, SimRun, _simulate


def run_real_time(
    jobs: Sequence[tuple[Scenario, PolicyParams]],
    seed: int,
    make_session: SessionMaker | None,
    concurrency: int,
    progress: bool = False,
) -> list[SimRun]:
    """Run each (scenario, params) on the wall clock, ``concurrency`` at a time; results in job order."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")

    async def main() -> list[SimRun]:
        gate = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(jobs), desc="scenarios (real time)", disable=not progress, leave=False)

        async def one(scenario: Scenario, params: PolicyParams) -> SimRun:
            async with gate:
                run = await _simulate(scenario, params, seed, make_session)
            bar.update(1)
            return run

        try:
            return list(await asyncio.gather(*(one(sc, p) for sc, p in jobs)))
        finally:
            bar.close()

    return asyncio.run(main())
