"""Adaptive micro-batching: the rows of concurrent requests go through one model call.

A request's rows are parsed on its own (a bad body is refused before it waits for
anyone), then queued with the model that was current when it arrived. One consumer per
server process takes the queue in order and makes batches:

- a batch holds the requests of one ``LoadedModel`` only: a request queued after a hot
  swap starts the next batch, so no batch mixes two versions and every answer names the
  model that made it;
- a batch is bounded in rows (``serve.max_batch_rows``; a larger request goes alone, never
  split) and in waiting (``serve.max_batch_wait_ms``). It waits only while other requests
  are known to be on their way (their bodies being read or parsed): a lone client never
  waits, and under load the requests that arrive while the model runs form the next batch
  (the same idea as BentoML's adaptive batching and Triton's dynamic batching);
- the model runs on one thread of its own, so the event loop keeps reading requests; a lone
  request with nothing else on its way is answered on the event loop itself.

Rows are prepared once for the whole batch (``flows.data.features``, row by row the same
as preparing each request alone). When a batch contains values that are not numbers, or
the model fails on it, each request of the batch is prepared and predicted on its own, so
one client's bad rows refuse that client only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from core.errors import InvalidDataError
from flows.data.features import prepare_features
from flows.models.predict import predict_frame
from flows.production import predlog
from service.serving.holder import LoadedModel
from service.serving.prediction_log import PredictionLogWriter, request_ids
from service.serving.rows import ClientError

log = logging.getLogger("retrain.serve")
# Up to this many rows, a lone request is predicted on the event loop (milliseconds).
INLINE_ROWS = 64


@dataclass
class Pending:
    """A parsed request waiting for its batch."""

    loaded: LoadedModel
    frame: pd.DataFrame
    future: asyncio.Future = field(repr=False)
    ids: list[str] = field(default_factory=list)  # a prediction id per row


@dataclass(frozen=True)
class Answer:
    """What one request gets back: its version and the JSON body, or the refusal."""

    version: str
    payload: bytes | None = None
    error: ClientError | None = None


def check_features(frame: pd.DataFrame, loaded: LoadedModel) -> None:
    """422 at once when a feature column is missing (the preparation's own message)."""
    if any(c not in frame.columns for c in loaded.schema.features):
        try:
            prepare_features(frame.iloc[:0], loaded.schema, "request")
        except InvalidDataError as exc:
            raise ClientError(422, str(exc), loaded.version) from None


def predict_batch(loaded: LoadedModel, frames: list[pd.DataFrame], ids: list[list[str]] | None = None,
                  log: PredictionLogWriter | None = None) -> list[Answer]:
    """One model call for the rows of every request in ``frames``; an answer per request,
    each row with its id (``ids``, a list per request); ``log``: where the answers are kept
    for their late labels."""
    ids = ids or [request_ids(one, None, None) for one in frames]
    frame = stack_frames(frames)
    prepared = prepare_features(frame, loaded.schema, "request")
    if prepared.unparsed and len(frames) > 1:
        return [predict_batch(loaded, [one], [one_ids], log)[0] for one, one_ids in zip(frames, ids)]
    if prepared.unparsed:
        # Training drops such rows, so a prediction from them would be a guess: refuse.
        return [Answer(loaded.version, error=ClientError(
            422, f"{prepared.unparsed_message('request')}; send numbers (null or empty when unknown)",
            loaded.version))]
    try:
        result = predict_frame(loaded.model, prepared.features, loaded.schema.task)
    except Exception:
        if len(frames) == 1:
            raise
        log.warning("a batch of %d requests failed in the model; predicting them one by one", len(frames))
        return [predict_batch(loaded, [one], [one_ids], log)[0] for one, one_ids in zip(frames, ids)]
    every_id = [i for one_ids in ids for i in one_ids]
    if log is not None:
        log.add(predlog.log_rows(every_id, loaded.version, time.time(), "retrain serve", result, prepared.features,
                                 loaded.schema.task))
    records = [{"id": i, **r} for i, r in zip(every_id, result.to_dict(orient="records"))]
    answers, start = [], 0
    for one in frames:
        part = records[start:start + len(one)]
        start += len(one)
        answers.append(Answer(loaded.version, json.dumps({"version": loaded.version, "predictions": part}).encode()))
    return answers


def stack_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The rows of every frame, each value as its request sent it. A column whose type
    differs between requests is stacked as objects: pandas would otherwise convert values
    (``true`` in one request and numbers in another become 1), and the preparation would
    read a number where it must refuse one."""
    if len(frames) == 1:
        return frames[0]
    seen: dict[str, object] = {}
    mixed: set[str] = set()
    for frame in frames:
        for column, dtype in frame.dtypes.items():
            if seen.setdefault(column, dtype) != dtype:
                mixed.add(column)
    if mixed:
        frames = [f.astype({c: object for c in mixed if c in f.columns}) for f in frames]
    return pd.concat(frames, ignore_index=True)


class MicroBatcher:
    """Queues parsed requests and answers them a batch at a time (see the module's doc)."""

    def __init__(self, max_rows: int, max_wait_seconds: float,
                 on_batch: Callable[[str, int, int], None] | None = None,
                 log: PredictionLogWriter | None = None):
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self.on_batch = on_batch  # (version, requests, rows) after each model call
        self.log = log  # [serve] log_predictions: the answers, for their late labels
        self._queue: deque[Pending] = deque()
        self._arriving = 0  # requests being read or parsed: worth a short wait
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        # One thread runs the model: batches are the parallelism within a process.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def arriving(self) -> _Arrival:
        """Context of a request from its start to its queueing: the batcher may wait for it."""
        return _Arrival(self)

    async def predict(self, loaded: LoadedModel, frame: pd.DataFrame, ids: list[str] | None = None) -> Answer:
        loop = asyncio.get_running_loop()
        self._start(loop)
        pending = Pending(loaded, frame, loop.create_future(), ids or request_ids(frame, None, None))
        self._queue.append(pending)
        self._notify()
        return await pending.future

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._consumer is None or self._consumer.done():
            self._wakeup = asyncio.Event()
            self._consumer = loop.create_task(self._consume(), name="micro-batcher")

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather(loop)
            batch = self._take()
            try:
                answers = await self._predict(loop, batch)
            except Exception as exc:  # noqa: BLE001 - the model failed on one request: its 500
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, answer in zip(batch, answers):
                if not pending.future.done():  # a client that went away is simply not answered
                    pending.future.set_result(answer)
            if self.on_batch is not None:
                answered = [len(p.frame) for p, a in zip(batch, answers) if a.payload is not None]
                self.on_batch(batch[0].loaded.version, len(answered), sum(answered))

    async def _predict(self, loop: asyncio.AbstractEventLoop, batch: list[Pending]) -> list[Answer]:
        frames, ids = [p.frame for p in batch], [p.ids for p in batch]
        if len(batch) == 1 and len(frames[0]) <= INLINE_ROWS and not self._queue and self._arriving == 0:
            # A small lone request, nothing else on its way: answered on the event loop, without
            # the two thread hand-offs (each a wait for the scheduler on a busy machine). A larger
            # one would hold up /health and /metrics: it goes to the model thread.
            return predict_batch(batch[0].loaded, frames, ids, self.log)
        return await loop.run_in_executor(self._executor, predict_batch, batch[0].loaded, frames, ids, self.log)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, within ``max_wait``, while more rows for this batch are on their way."""
        assert self._wakeup is not None
        deadline = loop.time() + self.max_wait
        while self._arriving > 0 and self._batch_rows() < self.max_rows:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _batch_rows(self) -> int:
        first = self._queue[0].loaded
        return sum(len(p.frame) for p in self._queue if p.loaded is first)

    def _take(self) -> list[Pending]:
        """The first request and those after it with the same model, within ``max_rows``;
        requests of another model stay queued, in order, for the next batch."""
        first = self._queue.popleft()
        batch, rows, kept = [first], len(first.frame), deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.loaded is first.loaded and rows + len(pending.frame) <= self.max_rows:
                batch.append(pending)
                rows += len(pending.frame)
            else:
                kept.append(pending)
                if pending.loaded is first.loaded:
                    break  # full: keep the order of the rest
        kept.extend(self._queue)
        self._queue = kept
        return batch


class _Arrival:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def __enter__(self) -> None:
        self.batcher._arriving += 1

    def __exit__(self, *exc: object) -> None:
        self.batcher._arriving -= 1
        self.batcher._notify()
