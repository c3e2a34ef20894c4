"""Group commit for webhooks: concurrent deliveries share one intake transaction.

Each webhook handler hands its priced delivery to the :class:`Batcher` and
waits for its own answer. The batcher runs :func:`intake.apply_many` over
whatever has queued up: at most ``max_running`` batches at once, each of at
most ``max_batch`` deliveries. A lone delivery is applied at once, so an
idle listener adds no delay; under a flood, a transaction and its round
trips are shared by dozens of webhooks instead of paid by each.

A handler's answer still means what it meant: 202 only after the
transaction holding its delivery has committed. What one delivery does to
the others is bounded: if PostgreSQL is down, each waiting handler gets
DatabaseUnavailableError (503), as it would alone; any other failure rolls
the batch back and each of its deliveries is applied again on its own, so
one bad delivery fails only itself. Two deliveries with the same id are
never in one batch: the later one waits for the next and is answered as a
replay.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import asyncpg
from loguru import logger

from haven.errors import DatabaseUnavailableError
from haven.listeners import intake
from haven.listeners.answers import Answer

MAX_BATCH = 128
MAX_RUNNING = 1

_Waiting = tuple[intake.Entry, "asyncio.Future[Answer]"]


class Batcher:
    """Applies the deliveries handed to it in shared transactions."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = MAX_BATCH,
        max_running: int = MAX_RUNNING,
    ) -> None:
        """Batch on ``pool``; ``max_running`` must stay below its size."""
        if max_batch < 1 or max_running < 1:
            raise ValueError("max_batch and max_running must be at least 1")
        self._pool = pool
        self._max_batch = max_batch
        self._max_running = max_running
        self._waiting: list[_Waiting] = []
        self._running: set[asyncio.Task[None]] = set()

    async def apply(self, entry: intake.Entry) -> Answer:
        """Apply ``entry`` in the next batch with room; return its answer.

        Raise what :func:`intake.apply_many` raises for it. Cancelling the
        caller does not withdraw the entry: once handed over, it is applied.
        """
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        self._start()
        return await future

    async def close(self) -> None:
        """Wait until every entry handed over has been applied or refused."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def waiting(self) -> int:
        """Entries handed over and not yet in a running batch."""
        return len(self._waiting)

    def _start(self) -> None:
        while self._waiting and len(self._running) < self._max_running:
            # A context of its own: the batch is no one request's, and its log
            # lines must not carry the id of the request that happened to
            # start it (each delivery's lines bind their own).
            task = asyncio.create_task(
                self._run(self._take()), context=contextvars.Context()
            )
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    def _take(self) -> list[_Waiting]:
        """The next batch: waiting entries in order, each delivery id once."""
        batch: list[_Waiting] = []
        left: list[_Waiting] = []
        keys: set[tuple[str, str]] = set()
        for waiting in self._waiting:
            entry = waiting[0]
            if len(batch) < self._max_batch and entry.key not in keys:
                keys.add(entry.key)
                batch.append(waiting)
            else:
                left.append(waiting)
        self._waiting = left
        return batch

    async def _run(self, batch: Sequence[_Waiting]) -> None:
        try:
            answers = await intake.apply_many(self._pool, [entry for entry, _ in batch])
        except DatabaseUnavailableError as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            logger.bind(
                deliveries=len(batch),
                request_ids=[entry.delivery.request_id for entry, _ in batch],
            ).warning(
                "a batch of deliveries failed ({}); applying each on its own",
                type(exc).__name__,
            )
            await asyncio.gather(*(self._run([waiting]) for waiting in batch))
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)


def _fail(future: asyncio.Future[Answer], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
