"""In-flight batching: one decode step for every active request (`Scheduler`, loop.py).

    Scheduler(engine, SchedulerOptions(...), drafter=None)   builds with per-row cache lengths
    SoloScheduler(CachedGenerator(engine), options)          the same interface, one request per thread
    make_scheduler(engine, options, drafter)                 whichever the build allows
    Request                                                  a submitted request: stream(), wait(), cancel()
"""

from mlpdeploy.runtime.scheduler.loop import Scheduler  # noqa: F401
from mlpdeploy.runtime.scheduler.options import SchedulerOptions  # noqa: F401
from mlpdeploy.runtime.scheduler.request import QUEUE_FULL, QueueFull, Request  # noqa: F401
from mlpdeploy.runtime.scheduler.solo import SoloScheduler  # noqa: F401


def make_scheduler(engine, options: SchedulerOptions | None = None, drafter=None):
    """A `Scheduler` when the build keeps per-row cache lengths, else a `SoloScheduler`."""
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.step import Stepper

    if Stepper(engine).row_lengths:
        return Scheduler(engine, options, drafter)
    return SoloScheduler(CachedGenerator(engine, drafter), options)
