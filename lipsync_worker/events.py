"""The worker's event bus: what each session's viewer sees happen, for `GET /sse`.

Sessions and their speech publish; each subscriber reads from its own bounded queue. Publishing
never waits: a subscriber that falls further behind than its queue holds is cut off (its stream
ends), so a slow reader can never slow the clock or the other readers.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

QUEUE_EVENTS = 256   # a chat reply streams a few dozen deltas; this is many turns of slack


@dataclass(frozen=True)
class Event:
    name: str
    data: dict      # always has "sessionid" and "time"

    @property
    def sessionid(self) -> int:
        return self.data["sessionid"]

    def encode(self) -> bytes:
        """The event as server-sent events put it on the wire (json.dumps escapes newlines)."""
        return f"event: {self.name}\ndata: {json.dumps(self.data, ensure_ascii=False)}\n\n".encode()

    def message(self) -> str:
        """The event as a data channel message: the name goes inside, as "event"."""
        return json.dumps({"event": self.name, **self.data}, ensure_ascii=False)


class Subscriber:
    """One reader's queue; `None` from get() means its stream is over."""

    def __init__(self, sessionid: int | None, size: int) -> None:
        self.sessionid = sessionid
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(size)

    def wants(self, event: Event) -> bool:
        return self.sessionid is None or self.sessionid == event.sessionid

    def offer(self, event: Event) -> bool:
        """Queue the event; False when the queue is full (the reader fell behind)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """Tell the reader its stream is over, after what it has queued unless that is too much."""
        if self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        return await self._queue.get()


class EventBus:
    def __init__(self, queue_events: int = QUEUE_EVENTS) -> None:
        self._queue_events = queue_events
        self._subscribers: set[Subscriber] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def publish(self, name: str, sessionid: int, **fields) -> Event:
        event = Event(name, {"sessionid": sessionid, "time": time.time(), **fields})
        for subscriber in list(self._subscribers):
            if subscriber.wants(event) and not subscriber.offer(event):
                self.unsubscribe(subscriber)
        return event

    def subscribe(self, sessionid: int | None = None) -> Subscriber:
        """A new reader of every event, or of one session's; ended at once if the bus is closed."""
        subscriber = Subscriber(sessionid, self._queue_events)
        if self._closed:
            subscriber.end()
        else:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            subscriber.end()

    def close(self) -> None:
        """End every stream: the worker is stopping and must not wait for its readers."""
        self._closed = True
        for subscriber in list(self._subscribers):
            self.unsubscribe(subscriber)
