"""The `inception-fast` command: bench (the main job), report, train and eval.

    inception-fast bench [--models ...]        how fast the six models run here (inception_fast.bench)
    inception-fast report RESULTS.json         Markdown table and PNG chart from benchmark JSON
    inception-fast train --model ... --data DIR   a training run (inception_fast.train)
    inception-fast eval --checkpoint CKPT --data DIR
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "eval"):
        from inception_fast import train

        return train.main(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    from inception_fast import bench

    return bench.main(argv)


if __name__ == "__main__":
    sys.exit(main())
