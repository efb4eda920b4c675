"""Ctrl-C and SIGTERM stop training at a step boundary, so the checkpoint saved on the way
out resumes exactly.

A KeyboardInterrupt raised in the middle of a step leaves a torn state: dropout has drawn
from the RNG, or the optimizer has stepped but the step counter has not moved. A
checkpoint of that state resumes, but not to the same result. So the first signal only
asks the loop to stop; the loop finishes its step (and its evaluation and checkpoint, if
due) and then raises `StopRequested`, and the checkpoint it then writes is one an
uninterrupted run would have written. A second signal stops at once, saving nothing
(the last complete checkpoint stays the newest). SIGTERM (a scheduler preempting the
job, `docker stop`) is treated like Ctrl-C.

In a multi-process run the processes must stop together: one that left alone would
leave the others waiting for it in their next collective call. So at every step
boundary they agree (the loop passes `agree`, an all-reduce of the largest signal
number): a signal that reached any process stops all of them after the same step, and
they save that step's checkpoint together. `accelerate launch` (torchrun) passes a
Ctrl-C or SIGTERM it receives on to every process and kills them if they have not
finished some 30 seconds later.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("softprompt")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """Raised at a step boundary after Ctrl-C / SIGTERM; the training state is consistent.

    Attributes:
        signum: the signal that asked for the stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DeferredInterrupt:
    """Turns the first SIGINT/SIGTERM into a request the training loop acts on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> DeferredInterrupt:
        """Take over the signals; a no-op outside the main thread (signals go there only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Give the signals back to whoever had them."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def raise_if_requested(self, agree: Callable[[int], int] | None = None) -> None:
        """Call at a step boundary: raises StopRequested if a stop was asked for.

        Args:
            agree: with several processes, called by all of them at the same step with
                this process's request (the signal number, 0 for none); returns the
                largest over all of them, the request they all act on.
        """
        signum = self.signum or 0
        if agree is not None:
            signum = agree(signum)
            if signum and self.signum is None:
                self.signum = signum  # stopping with the others: a signal now is a second
        if signum:
            raise StopRequested(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second time: stop now, whatever the state
        self.signum = signum
        logger.warning(
            "%s: stopping after the current step and saving a checkpoint "
            "(send it again to stop at once without saving)",
            signal.Signals(signum).name,
        )
