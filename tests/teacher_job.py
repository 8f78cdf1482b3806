"""A teacher job in its own process (the SIGKILL tests kill it half-way and run it again).

    python tests/teacher_job.py --base-url URL --cache PATH --out DIR --limit N [--mode batch --poll S]
"""

from __future__ import annotations

import argparse

from l2r_lib.config import TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher
from l2r_lib.teacher import save_round


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--mode", default="live", help="teacher.mode: live or batch (its state in --out)")
    ap.add_argument("--poll", type=float, default=0.05, help="teacher.batch_poll_s")
    args = ap.parse_args()
    cfg = TeacherConfig(kind="openai", model="smollm2", base_url=args.base_url, max_tokens=args.max_tokens,
                        max_concurrency=args.concurrency, requests_per_minute=100_000, timeout_s=120.0,
                        mode=args.mode, batch_poll_s=args.poll)
    teacher = build_teacher(cfg, "synthetic", args.cache, progress=False, batch_dir=args.out)
    records = teacher.rationales(load_examples("synthetic", "train")[: args.limit], round_idx=1)
    save_round(args.out, 1, records, teacher)
    print(f"requests={teacher.usage.requests} cache_hits={teacher.usage.cache_hits}")


if __name__ == "__main__":
    main()
