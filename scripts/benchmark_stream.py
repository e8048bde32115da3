"""Peak memory and training throughput of data.stream=true against the in-memory path, by table size.

    python scripts/benchmark.py --data --stream --data-rows 1000000 20000000
    python scripts/benchmark_stream.py --rows 1000000 20000000 --output stream.json

Each size is a directory of Parquet files (1M rows each, row groups of 128k rows; 49 float32 feature
columns and a 10-class integer target). Each measurement is one fresh child process training one epoch
with ``trainer.batch_size=4096``; its peak RSS (ru_maxrss) and the run's training samples per second
are reported. The in-memory path (the same rows in one Parquet file) runs at the smallest size only,
where it fits, alternating with the stream round by round; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_ROWS = 1_000_000
ROW_GROUP_ROWS = 131_072
RUN = ["data=csv", "data.target=y", "model.hidden_sizes=[64]", "trainer.max_epochs=1", "trainer.batch_size=4096",
       "trainer.device=cpu", "trainer.progress=false", "trainer.num_threads=1", "logger=[csv]"]
CHILD = """
import json, resource, sys
sys.path.insert(0, {root!r})
import mlpkit
run = mlpkit.train({overrides!r})
print(json.dumps({{"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "samples_per_second": run.metrics["samples_per_second"],
                  "test_accuracy": run.metrics["test"]["accuracy"]}}))
"""


def write_tables(folder: Path, rows: int, columns: int, single_file: bool) -> Path:
    """``rows`` x ``columns`` in Parquet files of FILE_ROWS rows (one file when ``single_file``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = folder / f"rows_{rows}"
    directory.mkdir()
    generator = np.random.default_rng(0)
    weights = generator.standard_normal((columns - 1, 10))
    file_rows = rows if single_file else FILE_ROWS
    for index, start in enumerate(range(0, rows, file_rows)):
        count = min(file_rows, rows - start)
        features = generator.standard_normal((count, columns - 1), dtype=np.float32)
        labels = (features @ weights + generator.standard_normal((count, 10))).argmax(axis=1)
        table = pa.table({**{f"x{i}": features[:, i] for i in range(columns - 1)}, "y": labels})
        pq.write_table(table, directory / f"part{index:04d}.parquet", row_group_size=ROW_GROUP_ROWS)
    return directory if not single_file else directory / "part0000.parquet"


def measure(path: Path, run_dir: Path, stream: bool) -> dict:
    overrides = [*RUN, f"data.path={path}", f"hydra.run.dir={run_dir}", *(["data.stream=true"] if stream else [])]
    output = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), overrides=overrides)],
                            capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def stream_benchmark(row_counts: list[int], rounds: int, columns: int = 50) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size_index, rows in enumerate(sorted(row_counts)):
            ways = {"stream": write_tables(Path(folder), rows, columns, single_file=False)}
            if size_index == 0:
                single = Path(folder) / "single"
                single.mkdir()
                ways["memory"] = write_tables(single, rows, columns, single_file=True)
            measured: dict[str, list[dict]] = {way: [] for way in ways}
            names = list(ways)
            for round_index in range(rounds):
                for way in names[round_index % len(names):] + names[:round_index % len(names)]:
                    run_dir = Path(folder) / "runs" / f"{way}_{rows}_{round_index}"
                    measured[way].append(measure(ways[way], run_dir, stream=way == "stream"))
            result = {"rows": rows, "columns": columns, "rounds": rounds}
            for way, runs in measured.items():
                for key in ("peak_mib", "samples_per_second", "test_accuracy"):
                    result[f"{way}_{key}"] = statistics.median(run[key] for run in runs)
            if "memory_samples_per_second" in result:
                result["memory_over_stream_throughput"] = (result["memory_samples_per_second"]
                                                           / result["stream_samples_per_second"])
            results.append(result)
            print(json.dumps(result), flush=True)
    smallest, largest = results[0], results[-1]
    summary = {"peak_growth": largest["stream_peak_mib"] / smallest["stream_peak_mib"],
               "memory_over_stream_throughput": smallest.get("memory_over_stream_throughput")}
    print(f"stream peak memory {smallest['stream_peak_mib']:.0f} MiB at {smallest['rows']:,} rows, "
          f"{largest['stream_peak_mib']:.0f} MiB at {largest['rows']:,} ({summary['peak_growth']:.3f}x); "
          f"in-memory throughput {summary['memory_over_stream_throughput'] or float('nan'):.2f}x the stream's at "
          f"{smallest['rows']:,} rows", flush=True)
    return {"stream": results, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    report = stream_benchmark(args.rows, args.rounds)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
