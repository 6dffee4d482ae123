"""How the daemons' garbage collector runs.

CPython's defaults (a young collection every 700 allocations) suit short scripts. In a
daemon that holds a request for each node's long poll and each report waiting on a
commit, those requests outlive several young collections and are promoted to the
oldest generation, which then fills quickly and is collected in full: a full pass over
hundreds of thousands of objects stops the event loop for tenths of a second, and
under load it was most of the scheduler's CPU. Young collections far apart let a
request end before it is promoted; what is loaded at start is frozen out of the passes
altogether (see ``Service.reload``).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: allocations (less deallocations) between two collections of the youngest generation
YOUNG = 50_000
#: collections of one generation between two of the next
OLDER = 20


def tune() -> None:
    gc.set_threshold(YOUNG, OLDER, OLDER)
    log.debug("garbage collector thresholds: %s", gc.get_threshold())
