"""Teacher requests per second, one at a time vs. concurrent, against a fake OpenAI-compatible
server on 127.0.0.1 that takes 200 ms per request (a remote LLM's latency, not its compute).

    python benchmarks/teacher_throughput.py [--latency 0.2] [--concurrency 64]

The last line is the ratio concurrent / sequential (the issue asks for >= 10x).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from l2r_lib.config import TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher

FAKE_SERVER = Path(__file__).resolve().parent.parent / "tests" / "fault_proxy.py"


def requests_per_s(url: str, concurrency: int, n: int, cache_dir: Path) -> float:
    cfg = TeacherConfig(kind="openai", model="fake-model", base_url=url, max_concurrency=concurrency,
                        requests_per_minute=1_000_000, tokens_per_minute=100_000_000, max_tokens=32)
    teacher = build_teacher(cfg, "synthetic", cache_dir / f"c{concurrency}.sqlite", progress=False)  # fresh cache
    examples = load_examples("synthetic", "train")[:n]
    start = time.perf_counter()
    teacher.rationales(examples, round_idx=1)
    elapsed = time.perf_counter() - start
    assert teacher.usage.requests == n, f"expected {n} requests sent, got {teacher.usage.requests}"
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sequential-n", type=int, default=20)
    ap.add_argument("--concurrent-n", type=int, default=256)
    args = ap.parse_args()
    # its own process, so that the server's work does not hold the client's GIL
    server = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            seq = requests_per_s(url, 1, args.sequential_n, Path(tmp))
            conc = requests_per_s(url, args.concurrency, args.concurrent_n, Path(tmp))
    finally:
        server.kill()
        server.wait()
    print(f"server latency: {args.latency * 1000:.0f} ms per request")
    print(f"sequential (1 in flight): {seq:.2f} requests/s over {args.sequential_n} requests")
    print(f"concurrent ({args.concurrency} in flight): {conc:.2f} requests/s over {args.concurrent_n} requests")
    print(f"concurrent/sequential: {conc / seq:.1f}x")


if __name__ == "__main__":
    main()
