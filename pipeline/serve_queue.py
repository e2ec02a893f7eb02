"""textclf-serve's limits and the model's queue (Batcher): one model thread, requests' texts batched
together, pending work weighed by its cost, a deadline per request. Used by pipeline/serve.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.explain import IG_STEPS


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20      # a request body past this is refused unread (413)
    max_batch: int = 64                # texts per request
    max_explain_batch: int = 16        # texts per request that asks for explanations
    max_text_chars: int = 20_000       # characters per text
    max_pending_texts: int = 4096      # texts waiting for the model before requests get 503
    max_pending_work: int = 1_000_000  # their cost (Batcher): words x passes; explanations at most half
    request_timeout: float = 30.0      # a request not answered by then gets a 503 (not started) or a 504
    batch_texts: int = 256             # at most this many texts in one forward pass
    batching: bool = True              # concurrent requests' texts share forward passes
    steps: int = IG_STEPS              # integrated-gradients steps


class RequestError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers


@dataclass(eq=False)
class _Work:
    """One request's texts on their way through the model thread."""
    texts: list[str]
    explain: bool
    remaining: int               # its cost not yet run (work units)
    future: asyncio.Future
    done_texts: int = 0
    parts: list = dataclasses.field(default_factory=list)
    started: bool = False        # some of its work has run (a timeout is then a 504, else a 503)
    released: bool = False
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """One model thread; requests' texts queue up while it is busy and go through together.

    Pending work is weighed by its cost, not by its count of texts: a text costs its words (at most the
    model's max_tokens) times its passes, 1 to classify and 4 x steps to explain (integrated gradients runs
    `steps` forward and backward passes; measured 84 to 170 times a classification of the same text).
    Classification goes first: explanations run a few texts at a time when no classification waits, so a
    plain request waits at most for one such part; explanations may hold at most half of
    max_pending_work. Every request has a deadline (request_timeout): past it, a 503 when none of its work
    had started (and its work is dropped), a 504 when some had."""

    def __init__(self, work: Callable, limits: Limits, explain: Callable | None = None,
                 words: Callable[[str], int] | None = None, explained_per_text: int = 1):
        self.work, self.explain_work, self.limits = work, explain, limits
        self.explained_per_text = explained_per_text  # explanations per text (a multi-label model: one per label, capped)
        self.words = words or (lambda text: max(1, len(text.split())))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.plain: deque = deque()
        self.explaining: deque = deque()
        self.pending = 0                # texts queued or running
        self.pending_work = 0           # their cost
        self.pending_explain_work = 0   # the part of it that explains
        self.closing = False
        self.draining = False
        self.drain_task: asyncio.Task | None = None  # held, so the loop cannot collect it mid-run

    def cost(self, texts: list[str], explain: bool) -> int:
        return sum(self.words(t) for t in texts) * (4 * self.limits.steps * self.explained_per_text if explain else 1)

    def check_room(self, count: int, cost: int = 0, explain: bool = False) -> None:
        limits = self.limits
        if self.closing:
            raise RequestError(503, "server", "shutting down")
        if self.pending + count > limits.max_pending_texts:
            raise RequestError(503, "texts", f"the server is busy ({self.pending} texts waiting, at most "
                               f"{limits.max_pending_texts}); retry later", {"Retry-After": "1"})
        if explain:
            share = limits.max_pending_work // 2
            if cost > share:
                raise RequestError(413, "texts", f"explaining these texts is {cost:,} units of work (words x "
                                   f"{4 * limits.steps} passes), more than one request may ask ({share:,}, half "
                                   "of --max-pending-work): send fewer or shorter texts")
            if self.pending_explain_work + cost > share:
                raise RequestError(503, "texts", f"the server is busy explaining ({self.pending_explain_work:,} "
                                   f"units of work waiting, at most {share:,}); retry later", {"Retry-After": "2"})
        elif self.pending_work and self.pending_work + cost > limits.max_pending_work:
            raise RequestError(503, "texts", f"the server is busy ({self.pending_work:,} units of work waiting, "
                               f"at most {limits.max_pending_work:,}); retry later", {"Retry-After": "1"})

    async def run(self, fn: Callable, *args):
        """Run anything on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def classify(self, texts: list[str]):
        """The probabilities of texts, in turn with other requests' texts."""
        return (await self.submit(texts, False))[0]

    async def submit(self, texts: list[str], explain: bool):
        """(probabilities, explanations or None) of one request's texts, within its deadline."""
        cost = self.cost(texts, explain)
        self.check_room(len(texts), cost, explain)
        loop = asyncio.get_running_loop()
        work = _Work(list(texts), explain, cost, loop.create_future())
        self.pending += len(texts)
        self.pending_work += cost
        if explain:
            self.pending_explain_work += cost
        work.timer = loop.call_later(self.limits.request_timeout, self._expire, work)
        (self.explaining if explain else self.plain).append(work)
        if not self.draining:
            self.draining = True
            self.drain_task = loop.create_task(self._drain())
        try:
            return await work.future
        finally:
            self._release(work)  # a client gone away: its work is dropped

    def _release(self, work: _Work, done: int | None = None) -> None:
        """Take work's texts (or `done` texts' worth) out of the pending counts."""
        if work.released:
            return
        cost = work.remaining if done is None else self.cost(work.texts[work.done_texts:work.done_texts + done],
                                                             work.explain)
        self.pending_work -= cost
        if work.explain:
            self.pending_explain_work -= cost
        work.remaining -= cost
        if done is None:
            self.pending -= len(work.texts) - work.done_texts
            work.released = True
            if work.timer is not None:
                work.timer.cancel()
            if not work.future.done():
                work.future.cancel()
        else:
            self.pending -= done
            work.done_texts += done

    def _expire(self, work: _Work) -> None:
        if work.future.done():
            return
        timeout = self.limits.request_timeout
        if work.started:
            error = RequestError(504, "request", f"not answered within {timeout:g} s (the request timeout, "
                                 "--request-timeout): the model is too busy; retry later or send less")
        else:
            error = RequestError(503, "request", f"not started within {timeout:g} s (the request timeout, "
                                 "--request-timeout): the model is too busy; its work was dropped; retry later",
                                 {"Retry-After": "2"})
        work.future.set_exception(error)
        self._release(work)

    def close(self) -> None:
        """Shutting down: every request still waiting gets a 503 now; new ones too."""
        self.closing = True
        for work in [*self.plain, *self.explaining]:
            if not work.future.done():
                work.future.set_exception(RequestError(503, "server", "shutting down"))
            self._release(work)

    def _take_plain(self) -> list[_Work]:
        batch, size = [], 0
        while self.plain and (not batch or (self.limits.batching and
                                            size + len(self.plain[0].texts) <= self.limits.batch_texts)):
            work = self.plain.popleft()
            if not work.future.done():
                batch.append(work)
                size += len(work.texts)
        return batch

    async def _drain(self) -> None:
        try:
            while self.plain or self.explaining:
                if self.plain:
                    batch = self._take_plain()
                    if not batch:
                        continue
                    for work in batch:
                        work.started = True
                    try:
                        probs = await self.run(self.work, [t for work in batch for t in work.texts])
                    except Exception as err:  # every waiting request hears of it; the drain goes on
                        for work in batch:
                            if not work.future.done():
                                work.future.set_exception(err)
                        continue
                    start = 0
                    for work in batch:
                        if not work.future.done():
                            work.future.set_result((probs[start:start + len(work.texts)], None))
                        start += len(work.texts)
                    continue
                work = self.explaining[0]
                if work.future.done():
                    self.explaining.popleft()
                    continue
                # A part of a few texts (about 256 words, at least one text): classification waits for no more.
                count, words = 0, 0
                for text in work.texts[work.done_texts:]:
                    if count and words + self.words(text) > 256:
                        break
                    count, words = count + 1, words + self.words(text)
                part = work.texts[work.done_texts:work.done_texts + count]
                work.started = True
                try:
                    work.parts.append(await self.run(self.explain_work, part))
                except Exception as err:
                    self.explaining.popleft()
                    if not work.future.done():
                        work.future.set_exception(err)
                    continue
                if work.future.done():
                    continue
                self._release(work, done=count)
                if work.done_texts == len(work.texts):
                    self.explaining.popleft()
                    probs = _joined([p for p, _ in work.parts])
                    work.future.set_result((probs, [x for _, xs in work.parts for x in xs]))
        finally:
            self.draining = False


def _joined(parts: list):
    """The parts' rows in order: arrays of probabilities, or anything with a `concat` of its own (the
    server's pipeline.inference.Predictions, which carry each text's reason beside its row)."""
    return type(parts[0]).concat(parts) if hasattr(type(parts[0]), "concat") else np.concatenate(parts)
