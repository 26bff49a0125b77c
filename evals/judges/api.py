"""Pairwise judge behind any OpenAI-compatible chat-completions endpoint.

Retries on 429, 5xx, timeouts and connection errors, waiting what a response's Retry-After asks
(capped) or else a seeded exponential backoff with jitter, within a per-request timeout, a number of
attempts and a per-item deadline; a bounded number of requests in flight; token and cost accounting;
verdicts parsed with a regex. The API key is read from an environment variable at construction,
handed to the client and nothing else: it is not part of the identity, the cache, the records, or any
message (failure reasons are scrubbed of it). Credentials in the base URL are never shown either:
the endpoint is exposed as `public_url`, and `scrub_secrets` cleans anything else before it is written.
"""
from __future__ import annotations

import email.utils
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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
    """The endpoint as recorded: no user:password@, query or fragment (any may carry a secret)."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "[unparseable url]"
    return urlunsplit((p.scheme, p.netloc.rsplit("@", 1)[-1], p.path, "", ""))


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be secrets: its user:password, password and query values."""
    try:
        p = urlsplit(url)
    except ValueError:
        return [url]
    userinfo = p.netloc.rpartition("@")[0]
    return [userinfo, userinfo.partition(":")[2]] + [v for _, v in parse_qsl(p.query)]


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (4 characters or more, longest first) replaced by [redacted]."""
    for s in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "[redacted]")
    return text


URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
SECRET_ENV_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)


def scrub_secrets(obj, secrets: Iterable[str] = ()):
    """A copy of a JSON-like object (dicts, lists, tuples, strings; argv lists too) fit to be written:
    every URL in a string loses its credentials (made `public_url`), and every given secret and every
    value (8 characters or more) of an environment variable whose name ends in KEY, TOKEN, SECRET or
    PASSWORD (OPENAI_API_KEY, HF_TOKEN, ...) is replaced by [redacted]."""
    found = list(secrets) + [v for k, v in os.environ.items() if SECRET_ENV_RE.search(k) and len(v) >= 8]

    def clean(x):
        if isinstance(x, str):
            return redact(URL_RE.sub(lambda m: public_url(m.group(0)), x), found)
        if isinstance(x, dict):
            return {clean(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(clean(v) for v in x)
        return x

    return clean(obj)


def retry_after(headers) -> float | None:
    """Seconds a response asks to wait before the next request: retry-after-ms, or Retry-After as
    seconds or an HTTP-date; None when absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name) or "nan") * scale
        except ValueError:
            continue
        if seconds == seconds:  # not NaN
            return seconds
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after") or "")
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


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


class ApiJudge(Judge):
    name = "api"
    proxy = False
    version = 1

    def __init__(self, model: str = "gpt-4o-mini", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4, max_tokens: int = 1024,
                 temperature: float = 0.0, timeout_s: float = 60.0, max_attempts: int = 5,
                 deadline_s: float = 300.0, retry_after_max_s: float = 60.0, backoff: Backoff | None = None,
                 use_reference: bool = True, cache: VerdictCache | None = None):
        super().__init__(cache)
        if concurrency < 1 or max_attempts < 1:
            raise JudgeError("api judge: concurrency and max_attempts must be >= 1")
        for name, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s),
                            ("retry_after_max_s", retry_after_max_s)):
            if not value > 0:
                raise JudgeError(f"api judge: {name} must be > 0, got {value!r}")
        key = os.environ.get(api_key_env)
        if not key:
            raise JudgeError(f"api judge: environment variable {api_key_env} is not set")
        try:
            import openai
        except ImportError:
            raise JudgeError("api judge needs the openai package: pip install 'dadpo-repro[api]'") from None
        self._openai = openai
        # The raw base URL is kept by the client only; everything this judge shows uses `endpoint`.
        self._secrets = [key] + url_secrets(base_url or "")
        self.endpoint = public_url(base_url or "") or "openai-default"
        try:  # the client's own retries are off: ours are counted, seeded and testable
            self._client = openai.OpenAI(api_key=key, base_url=base_url or None, timeout=timeout_s, max_retries=0)
        except Exception as e:  # noqa: BLE001 - a bad URL: one line, credentials scrubbed
            msg = (str(e).strip().splitlines() or [""])[0]
            raise JudgeError(self._scrub(f"api judge: cannot use endpoint {self.endpoint}: "
                                         f"{type(e).__name__}: {msg}")) from None
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature
        self.timeout_s, self.max_attempts, self.deadline_s = timeout_s, max_attempts, deadline_s
        self.retry_after_max_s = retry_after_max_s
        self.backoff = backoff or Backoff()
        self.use_reference = use_reference
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._usage_lock = threading.Lock()
        # How hard it tries, for the run facts; never in the identity: they cannot change a verdict.
        self.stats["settings"] = {"endpoint": self.endpoint, "timeout_s": timeout_s, "max_attempts": max_attempts,
                                  "deadline_s": deadline_s, "retry_after_max_s": retry_after_max_s,
                                  "concurrency": concurrency}

    @property
    def identity(self) -> dict:
        return {"name": self.name, "model": self.model, "endpoint": self.endpoint,
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
        return redact(text, self._secrets)

    def _retryable(self, exc: Exception) -> bool:
        o = self._openai
        # A garbled body (JSONDecodeError) is treated like a transient server fault.
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.APIResponseValidationError,
                            json.JSONDecodeError)):
            return True
        if isinstance(exc, o.APIStatusError):
            return exc.status_code in RETRY_STATUS
        return False

    def _wait(self, attempt: int, exc: Exception) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based): the response's Retry-After when
        it gives a positive one (at most retry_after_max_s), else the seeded backoff."""
        hint = retry_after(getattr(getattr(exc, "response", None), "headers", None))
        if hint is not None and hint > 0:
            return min(hint, self.retry_after_max_s)
        return self.backoff.delay(attempt)

    def _one(self, item: JudgeItem) -> Verdict:
        messages = pairwise_messages(item, self.use_reference)
        end = time.monotonic() + self.deadline_s
        deadline = f"per-item deadline of {self.deadline_s:g}s"
        last = ""
        for attempt in range(self.max_attempts):
            left = end - time.monotonic()
            if left <= 0:
                return Verdict.fail(f"gave up after {attempt} attempts: {deadline} passed; last error {last}",
                                    attempts=attempt)
            with self._usage_lock:
                self.usage["requests"] += 1
                self.usage["retries"] += int(attempt > 0)
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                    timeout=min(self.timeout_s, left))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reasoned verdict
                status = getattr(exc, "status_code", None)
                # scrub before cutting: a cut can split the key (project keys are ~164 chars) so
                # that the whole-key replacement in _scrub no longer finds it
                msg = (self._scrub(str(exc)).strip().splitlines() or [""])[0][:200]
                last = f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {msg}"
                if not self._retryable(exc):
                    return Verdict.fail(last, attempts=attempt + 1)
                if attempt + 1 < self.max_attempts:
                    wait = self._wait(attempt, exc)
                    if time.monotonic() + wait >= end:  # the wait alone would pass the deadline
                        return Verdict.fail(f"gave up after {attempt + 1} attempts: {deadline} would pass "
                                            f"before the next; last error {last}", attempts=attempt + 1)
                    self.backoff.sleep(wait)
                continue
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
        return Verdict.fail(f"gave up after {self.max_attempts} attempts; last error {last}",
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
