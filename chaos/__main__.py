"""`make chaos`: the fault scenarios, bounded, on loopback only; prints one summary line per
scenario and exits non-zero when any scenario failed."""

from __future__ import annotations

import sys

from chaos import redis_kills


def main() -> int:
    return redis_kills.main()


if __name__ == "__main__":
    sys.exit(main())
