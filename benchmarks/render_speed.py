"""How fast the stylised-faces renderer is on this machine (images per second).

    python benchmarks/render_speed.py                    # 64x64, one process
    python benchmarks/render_speed.py --size 128 --n 2000
    python benchmarks/render_speed.py --batch 32         # smaller render_batch calls
    python benchmarks/render_speed.py --processes 2      # one renderer per core

Prints the best of `--repeats` runs. "cpu" divides by the CPU time of the process(es)
and is what the renderer costs; "wall" divides by elapsed time and drops when other
programs share the machine.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

from genbackbones.data import render_batch


def render_range(seed: int, start: int, n: int, size: int, batch: int) -> float:
    """Render faces start..start+n in batches; returns the CPU seconds it took."""
    cpu = time.process_time()
    for i in range(start, start + n, batch):
        render_batch(seed, range(i, min(i + batch, start + n)), size)
    return time.process_time() - cpu


def measure(n: int, size: int, batch: int, processes: int) -> tuple[float, float]:
    """(cpu images/s, wall images/s) for rendering n faces."""
    wall = time.perf_counter()
    if processes == 1:
        cpu = render_range(0, 0, n, size, batch)
    else:
        share = n // processes
        with ProcessPoolExecutor(processes) as pool:
            cpu = sum(pool.map(render_range, [0] * processes, [p * share for p in range(processes)],
                               [share] * processes, [size] * processes, [batch] * processes))
        n = share * processes
    wall = time.perf_counter() - wall
    return n / cpu * processes, n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=4000, help="faces per run")
    parser.add_argument("--batch", type=int, default=256, help="faces per render_batch call")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    render_batch(0, range(args.batch), args.size)  # warm up: imports, first allocations
    runs = [measure(args.n, args.size, args.batch, args.processes) for _ in range(args.repeats)]
    cpu, wall = max(r[0] for r in runs), max(r[1] for r in runs)
    print(f"stylised faces {args.size}x{args.size}, batch {args.batch}, {args.processes} process(es), "
          f"{os.cpu_count()} CPU cores: {cpu:,.0f} images/s (cpu), {wall:,.0f} images/s (wall)")


if __name__ == "__main__":
    main()
