"""Long device work as sans-I/O jobs.

A job is a generator run on the device's owner thread. It does its work in
steps of at most about a millisecond and between steps yields:

* ``None``: a checkpoint. The device is consistent here (every slot holds
  either its old or its new state); the driver may run other operations on
  the device before resuming, or stop the job by closing the generator (its
  ``finally`` clauses undo what must be undone).
* ``Offload(fn, *args)``: a blocking call (file I/O on owned buffers) the
  driver runs off the owner thread; its result is sent back into the job, or
  its exception thrown there. With ``background=True`` the driver sends back
  a ``Ticket`` at once and the job yields that ticket later to get the result,
  so it can work meanwhile. A job never stops at an Offload (only at a
  checkpoint).

The job's return value (``StopIteration.value``) is the operation's result.
``run`` is the synchronous driver (the library API and the tests); the daemon
has the trio driver (``uzram.daemon.jobs.drive``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Offload:
    """A blocking call to run off the owner thread."""

    __slots__ = ("fn", "args", "background")

    def __init__(self, fn: Callable[..., Any], *args: Any, background: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.background = background


class Ticket:
    """A background Offload's result: yield the ticket to wait for it."""

    __slots__ = ("result", "error", "done", "event")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.event: Any = None   # for the driver (the trio driver's wake-up)


Request = Offload | Ticket | None
Job = Generator[Request, Any, T]


def run(job: Job[T]) -> T:
    """The synchronous driver: every step and every Offload on this thread."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            req = job.throw(error) if error is not None else job.send(value)
            value = error = None
            if req is None:
                continue
            if isinstance(req, Ticket):
                value, error = req.result, req.error
                continue
            result: Any = None
            try:
                result = req.fn(*req.args)
            except Exception as e:
                error = e
            if req.background:   # a background request's outcome goes into its ticket
                ticket = Ticket()
                ticket.result, ticket.error, ticket.done = result, error, True
                value, error = ticket, None
            else:
                value = result
    except StopIteration as stop:
        returned: T = stop.value
        return returned
    finally:
        job.close()


def checkpoints(it: Any) -> Job[None]:
    """A plain iterator of steps (``ZsPool.compact_steps``) as a job."""
    for _ in it:
        yield None
