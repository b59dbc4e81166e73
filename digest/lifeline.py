"""Worker processes die with the process that started them.

`digest send --workers N` runs its workers as child processes (forked on Linux, spawned
elsewhere: digest.send_processes). An operator who kills the parent (`kill -9`, SIGTERM from
systemd or the OOM killer) expects the send to stop; without this, the workers would go on
sending on their own.

How: a pipe. The parent holds the write end of a pipe whose read end every child has (the stdlib's `multiprocessing.parent_process().sentinel`, made for this); the kernel
closes it however the parent ends, so the read end turns readable at once, and a watcher thread
in the child ends the child. Chosen over `prctl(PR_SET_PDEATHSIG)`: that signal fires when the
*thread* that started the child ends (a send started from a pool thread would kill its workers
as soon as that thread finished), it needs a `getppid()` check for a parent that died before
the call, and it exists on Linux alone; the pipe has none of these gaps.

Forked workers: a worker forked after another also holds that one's write end (fork copies
every descriptor); the chain unwinds in milliseconds: the last-forked one sees its parent's end
close, exits, and so releases the ends it held for the ones before it.

The child exits at once rather than finishing its batch: a kill of the parent is an emergency
stop. What it held is released as after any crash: the next run's `ledger.recover` returns rows
never handed over to `pending` and marks the ones handed over `unknown`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.connection import wait

EXIT_ORPHANED = 75  # EX_TEMPFAIL: the run was cut short; running the command again continues


def die_with_parent() -> bool:
    """In a worker process: end it as soon as its parent is gone. False when there is no
    parent to watch (the main process)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return False
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])  # readable only at EOF: the parent's end closed
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="digest-lifeline", daemon=True).start()
    return True
