"""``python -m benches``: run the benchmarks, print the table, write the results.

Options: ``--scale`` shrinks every size (``0.01`` for a smoke run),
``--only`` picks benchmarks by name, ``--output`` names the results file.
By default a full run (all five at scale 1) writes
``benches/results/latest.json``, the run ``benches/README.md`` reports, and
any other run ``benches/results/partial.json``, so a smoke run never
replaces the recorded one. Exits 1 when a benchmark could not run at all;
a missed goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from loguru import logger

from benches import backfill, figures, ingest, machine, mint, reconcile, reorg, services
from benches.context import Context
from benches.figures import Failure, Figure, Outcome

Measure = Callable[[Context], Awaitable[Figure]]
BENCHMARKS: dict[str, Measure] = {
    ingest.NAME: ingest.measure,
    backfill.NAME: backfill.measure,
    mint.NAME: mint.measure,
    reconcile.NAME: reconcile.measure,
    reorg.NAME: reorg.measure,
}
RESULTS = services.ROOT / "benches" / "results"
FULL_OUTPUT = RESULTS / "latest.json"
PARTIAL_OUTPUT = RESULTS / "partial.json"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="factor applied to every size (default 1: the sizes of issue 9)",
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"results file (default: {FULL_OUTPUT.name} for a full run, "
        f"{PARTIAL_OUTPUT.name} for any other, in {RESULTS})",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    args.names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; "
            f"expected some of {','.join(BENCHMARKS)}"
        )
    if args.output is None:
        full = args.scale == 1.0 and sorted(args.names) == sorted(BENCHMARKS)
        args.output = FULL_OUTPUT if full else PARTIAL_OUTPUT
    return args


async def run(names: Sequence[str], scale: float) -> list[Outcome]:
    """Run the named benchmarks in order; a failure is recorded, not raised."""
    outcomes: list[Outcome] = []
    async with services.Databases() as databases:
        context = Context(scale=scale, databases=databases)
        for name in names:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                outcomes.append(await BENCHMARKS[name](context))
            except Exception as exc:  # the top of the run: report, go on
                traceback.print_exc()
                outcomes.append(Failure(name, f"{type(exc).__name__}: {exc}"))
            took_s = time.perf_counter() - started
            print(f"# {name} took {took_s:.1f} s", file=sys.stderr, flush=True)
    return outcomes


async def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    # Benchmarks drive haven's own code in this process too (the reorg's
    # tailer): its log lines would drown the table. Workers log to their own
    # stderr, kept only when they fail.
    logger.remove()
    started = time.perf_counter()
    outcomes = await run(args.names, args.scale)
    described = await machine.describe(
        admin_dsn=services.ADMIN_DSN, redis_url=services.REDIS_URL
    )
    figures.write(
        args.output,
        outcomes,
        machine=described,
        scale=args.scale,
        elapsed_s=time.perf_counter() - started,
    )
    print(figures.table(outcomes))
    print(f"\nresults written to {args.output}")
    return 1 if any(isinstance(o, Failure) for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
