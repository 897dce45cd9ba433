"""`python -m tests.stress`: a seeded stress run with faults on a local cluster (it needs
PostgreSQL's server binaries and redis-server; see tests/stress/run.py). Exit 0 when every rule
holds, 1 on a violation (the history is kept and the smallest window printed)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tests.stress.run import StressOptions, main_run


@click.command()
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(10))
@click.option("--servers", default=3, show_default=True, type=click.IntRange(2, 16))
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--faults-per-s", default=0.5, show_default=True, type=click.FloatRange(0.01, 10))
@click.option("--cold-skus", default=200, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--history-dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(
    seed: int,
    seconds: float,
    servers: int,
    concurrency: int,
    faults_per_s: float,
    cold_skus: int,
    history_dir: Path | None,
) -> None:
    options = StressOptions(
        seed=seed,
        seconds=seconds,
        servers=servers,
        concurrency=concurrency,
        faults_per_s=faults_per_s,
        cold_skus=cold_skus,
        history_dir=history_dir,
    )
    sys.exit(main_run(options))


if __name__ == "__main__":
    main()
