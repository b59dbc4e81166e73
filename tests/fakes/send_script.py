"""A send in its own process, for the fault tests (killed with SIGKILL mid-send).

python -m tests.fakes.send_script CONFIG DATABASE_URL PROVIDER [BATCH_SIZE]

SEND_SCRIPT_MINUTES_AHEAD=N runs it with the clock N minutes ahead (deferred rows come due).
"""

from __future__ import annotations

import os
import sys
from datetime import date, datetime, timedelta

from digest.clock import utcnow
from digest.config import load_config
from digest.db import make_engine, session_factory
from digest.sending import RetryPolicy, SendOptions, send_edition


def main() -> None:
    config_path, url, provider = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else None
    ahead = timedelta(minutes=float(os.environ.get("SEND_SCRIPT_MINUTES_AHEAD", "0")))

    def clock() -> datetime:
        return utcnow() + ahead

    options = SendOptions(
        provider=provider, retry=RetryPolicy(attempts=8, base=0.02, cap=0.2), batch_size=batch
    )
    report = send_edition(
        load_config(config_path),
        session_factory(make_engine(url)),
        "daily",
        date(2026, 3, 10),
        options,
        clock=clock,
    )
    print(report.summary())


if __name__ == "__main__":
    main()
