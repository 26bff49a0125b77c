"""Pairwise judge behind any OpenAI-compatible chat-completions endpoint.

Retries (exponential backoff with jitter) on 429, 5xx, timeouts and connection errors; a bounded
number of requests in flight; token and cost accounting; verdicts parsed with a regex. The API key is
read from an environment variable at construction, handed to the client and nothing else: it is not
part of the identity, the cache, the records, or any message (failure reasons are scrubbed of it).
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterator

from evals.judges.base import (VERDICT_LABELS, Judge, JudgeError, JudgeItem, Verdict, VerdictCache,
                               pairwise_messages, template_hash)

# USD per 1M tokens (input, output), list prices; anything else is costed "unknown".
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
# The final verdict is the last [[X]] in the reply: explanations may quote the format first.
VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
RETRY_STATUS = {408, 409, 429} | set(range(500, 600))  # others (400, 401, 404) fail at once


def price_of(model: str) -> tuple[float, float] | None:
    """Price of a model name, also for dated snapshots ("gpt-4o-2024-08-06" -> "gpt-4o")."""
    for name, price in PRICES.items():
        if model == name or re.fullmatch(re.escape(name) + r"-(\d{4}-\d{2}-\d{2}|\d{4})", model):
            return price
    return None


def public_url(url: str) -> str:
    """The endpoint as recorded: no user:password@ and no query string (either may carry a secret)."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc.rsplit("@", 1)[-1], p.path, "", ""))


def parse_verdict(text: str) -> str | None:
    found = VERDICT_RE.findall(text or "")
    return VERDICT_LABELS[found[-1]] if found else None


class Backoff:
    """Delay before retry k (0-based): min(cap, base * 2**k) * (1 + jitter * U[0,1)), seeded."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, jitter: float = 0.5, seed: int = 0,
                 sleep: Callable[[float], None] = time.sleep):
        self.base, self.cap, self.jitter, self.sleep = base, cap, jitter, sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def delay(self, attempt: int) -> float:
        with self._lock:
            u = self._rng.random()
        return min(self.cap, self.base * 2 ** attempt) * (1 + self.jitter * u)

    def wait(self, attempt: int) -> float:
        d = self.delay(attempt)
        self.sleep(d)
        return d


class ApiJudge(Judge):
    name = "api"
    proxy = False
    version = 1

    def __init__(self, model: str = "gpt-4o-mini", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4, max_tokens: int = 1024,
                 temperature: float = 0.0, timeout: float = 120.0, max_attempts: int = 6,
                 backoff: Backoff | None = None, use_reference: bool = True, cache: VerdictCache | None = None):
        super().__init__(cache)
        if concurrency < 1 or max_attempts < 1:
            raise JudgeError("api judge: concurrency and max_attempts must be >= 1")
        key = os.environ.get(api_key_env)
        if not key:
            raise JudgeError(f"api judge: environment variable {api_key_env} is not set")
        try:
            import openai
        except ImportError:
            raise JudgeError("api judge needs the openai package: pip install 'dadpo-repro[api]'") from None
        self._openai = openai
        # The client's own retries are off: ours are counted, seeded and testable.
        self._client = openai.OpenAI(api_key=key, base_url=base_url or None, timeout=timeout, max_retries=0)
        self.model, self.base_url, self.api_key_env = model, base_url or "", api_key_env
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature
        self.timeout, self.max_attempts = timeout, max_attempts
        self.backoff = backoff or Backoff()
        self.use_reference = use_reference
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._usage_lock = threading.Lock()

    @property
    def identity(self) -> dict:
        return {"name": self.name, "model": self.model, "endpoint": public_url(self.base_url) or "openai-default",
                "template": template_hash(self.use_reference), "use_reference": self.use_reference,
                "decoding": {"temperature": self.temperature, "max_tokens": self.max_tokens},
                "parser": VERDICT_RE.pattern, "version": self.version}

    def cost(self) -> float | str:
        """USD spent by this judge's requests so far, or "unknown" for a model without a price."""
        price = price_of(self.model)
        if price is None:
            return "unknown"
        return (self.usage["prompt_tokens"] * price[0] + self.usage["completion_tokens"] * price[1]) / 1e6

    def _scrub(self, text: str) -> str:
        key = self._client.api_key
        return text.replace(key, "[redacted]") if key else text

    def _retryable(self, exc: Exception) -> bool:
        o = self._openai
        # A garbled body (JSONDecodeError) is treated like a transient server fault.
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.APIResponseValidationError,
                            json.JSONDecodeError)):
            return True
        if isinstance(exc, o.APIStatusError):
            return exc.status_code in RETRY_STATUS
        return False

    def _one(self, item: JudgeItem) -> Verdict:
        messages = pairwise_messages(item, self.use_reference)
        last = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self.backoff.wait(attempt - 1)
                with self._usage_lock:
                    self.usage["retries"] += 1
            with self._usage_lock:
                self.usage["requests"] += 1
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reasoned verdict
                status = getattr(exc, "status_code", None)
                # scrub before cutting: a cut can split the key (project keys are ~164 chars) so
                # that the whole-key replacement in _scrub no longer finds it
                msg = (self._scrub(str(exc)).strip().splitlines() or [""])[0][:200]
                last = f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {msg}"
                if self._retryable(exc):
                    continue
                return Verdict.fail(self._scrub(last), attempts=attempt + 1)
            try:
                text = resp.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):
                return Verdict.fail("malformed response: no choices[0].message.content", attempts=attempt + 1)
            usage = {"prompt_tokens": getattr(resp.usage, "prompt_tokens", 0) or 0,
                     "completion_tokens": getattr(resp.usage, "completion_tokens", 0) or 0}
            with self._usage_lock:
                for k, v in usage.items():
                    self.usage[k] += v
            verdict = parse_verdict(text)
            text = self._scrub(text)
            details = {"judgment": text, "usage": usage, "attempts": attempt + 1,
                       "served_model": getattr(resp, "model", None)}
            if verdict is None:
                return Verdict.fail(f"unparseable verdict: {text[-120:]!r}", **details)
            return Verdict(verdict, None, details)
        return Verdict.fail(self._scrub(f"gave up after {self.max_attempts} attempts; last error {last}"),
                            attempts=self.max_attempts)

    def _judge_iter(self, items: list[JudgeItem]) -> Iterator[tuple[int, Verdict]]:
        if not items:
            return
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, it): i for i, it in enumerate(items)}
            for fut in as_completed(futures):  # main thread: the SQLite cache is written here
                yield futures[fut], fut.result()

    def close(self) -> None:
        self._client.close()
