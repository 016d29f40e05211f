"""Progress bars for one remote call: the server's stages, and large result transfers.

Bars are tqdm bars that only appear when worth it: the server's ``Progress`` after
``delay`` seconds, the transfer once the results announced pass ``transfer_threshold`` bytes.
"""

from __future__ import annotations

from typing import Any

TRANSFER_THRESHOLD = 64 << 20
"""Results larger than this (in total) get a download bar."""


class CallProgress:
    """The bars of one ``Run``; ``enabled=False`` shows nothing."""

    def __init__(
        self, enabled: bool = True, transfer_threshold: int = TRANSFER_THRESHOLD, delay: float = 0.5
    ):
        self.enabled = enabled
        self.transfer_threshold = transfer_threshold
        self.delay = delay
        self._stage_bar: Any = None
        self._stage: str | None = None
        self._transfer_bar: Any = None
        self._announced = 0
        self._received = 0

    def server(self, done: int, total: int, stage: str) -> None:
        """A ``Progress`` message from the server."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if self._stage_bar is None or stage != self._stage:
            self._close_stage()
            self._stage = stage
            self._stage_bar = tqdm(total=total or None, desc=stage or "server", delay=self.delay, leave=False)
        bar = self._stage_bar
        if total and bar.total != total:
            bar.total = total
        if done > bar.n:
            bar.update(done - bar.n)  # update (not refresh) honours the display delay

    def announce(self, nbytes: int) -> None:
        """A result header: ``nbytes`` more to receive."""
        self._announced += nbytes
        if not self.enabled:
            return
        if self._transfer_bar is None and self._announced > self.transfer_threshold:
            from tqdm.auto import tqdm

            self._close_stage()
            self._transfer_bar = tqdm(
                total=self._announced, initial=self._received, unit="B", unit_scale=True,
                unit_divisor=1024, desc="results", leave=False, delay=self.delay,
            )  # fmt: skip
        elif self._transfer_bar is not None:
            self._transfer_bar.total = self._announced

    def received(self, nbytes: int) -> None:
        """A chunk of ``nbytes`` arrived."""
        self._received += nbytes
        if self._transfer_bar is not None:
            self._transfer_bar.update(nbytes)

    def _close_stage(self) -> None:
        if self._stage_bar is not None:
            self._stage_bar.close()
            self._stage_bar = None

    def close(self) -> None:
        self._close_stage()
        if self._transfer_bar is not None:
            self._transfer_bar.close()
            self._transfer_bar = None
