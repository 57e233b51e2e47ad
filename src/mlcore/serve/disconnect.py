"""Stop generating for a client that went away, in a non-streamed response (vLLM's ``with_cancellation``).

A streamed response notices a closed connection itself (Starlette cancels the stream, whose ``finally`` aborts
the engine request). A plain JSON response is only written at the end, so without this a client that timed out
or closed its connection kept its engine slot and KV blocks until ``max_tokens`` (a chat without
``max_tokens``: until the end of the context).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def _disconnect(request: Request) -> None:
    """Return once the client has gone. Called after the body was read, so ``receive`` has nothing else to give."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """``(True, result of work)``; or ``(False, None)`` when the client disconnects first: ``work`` is then
    cancelled, so its ``finally`` blocks run (they abort the engine request and write the audit line)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (server shutdown): take the work down with it
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None
