"""The store in Redis, for managers on any number of hosts. A compare-and-set is one small Lua
script, which Redis runs atomically; a decision over every record (a claim: placement.place) is
read under WATCH and written in one MULTI, retried when a record changed meanwhile. The scripts
only check and write: every rule is in Python (store/base.py). SqliteStore is the spec.

Layout under the prefix: inst:AVATAR, a hash of Instance.to_record(); avatars, the set of names;
lease:NAME, hashes (holder, expires); counts, a hash of counters. The scripts build instance keys from
the prefix rather than taking them as KEYS, so this needs a standalone Redis, not a cluster.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from typing import Iterator

import redis

from ..instances import Instance, State, record_value
from .base import CAS_TRIES, Store, StoreError
from .redis_client import connect, redacted

_TIMEOUT = 5.0  # seconds, for connecting and for every reply


# Shared by the instance scripts; ARGV[1] is always the prefix.
_LIB = """
local PREFIX = ARGV[1]
local function key(avatar) return PREFIX .. 'inst:' .. avatar end
"""

# Base.Store._update, knowing no rule: ARGV: prefix, avatar, the allowed states (JSON list, or '*'
# for any), the expected fields (JSON object of strings), the additions (JSON object of integers),
# then field, value pairs to set. A number is compared as a number ('2.0' is 2).
_UPDATE = """
local k = key(ARGV[2])
local state = redis.call('HGET', k, 'state')
if not state then return false end
if ARGV[3] ~= '*' then
  local ok = false
  for _, allowed in ipairs(cjson.decode(ARGV[3])) do ok = ok or allowed == state end
  if not ok then return false end
end
for field, want in pairs(cjson.decode(ARGV[4])) do
  local have = redis.call('HGET', k, field)
  if have ~= want and not (tonumber(have) and tonumber(have) == tonumber(want)) then return false end
end
for field, n in pairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', k, field, n) end
if #ARGV > 5 then redis.call('HSET', k, unpack(ARGV, 6)) end
return redis.call('HGETALL', k)
"""

_REMOVE = """
if redis.call('HGET', key(ARGV[2]), 'state') ~= ARGV[3] then return 0 end
redis.call('DEL', key(ARGV[2]))
redis.call('SREM', PREFIX .. 'avatars', ARGV[2])
return 1
"""

# KEYS[1]: the lease; ARGV: holder, expires, now, a safety-net PEXPIRE in ms.
_TAKE_LEASE = """
local holder, expires = unpack(redis.call('HMGET', KEYS[1], 'holder', 'expires'))
if holder and holder ~= ARGV[1] and tonumber(expires) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_DROP_LEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS[1]: the kind's hash, KEYS[2]: its expiries; ARGV: key, value, expires, now.
_CLAIM_DOC = """
local expires = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 and not (expires > 0 and expires < tonumber(ARGV[4])) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""


def _refused(exc: BaseException) -> bool:
    """Whether the server itself answered with an error somewhere in exc's chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.ResponseError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _instance(flat: list[str]) -> Instance:
    return Instance.from_record(dict(zip(flat[::2], flat[1::2])))


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "avm:") -> None:
        self.url = redacted(url)
        self.prefix = prefix
        self._counts = prefix + "counts"
        with self._errors():
            self._redis = connect(url, _TIMEOUT)  # on Sentinel, writes wait for a replica (redis_client)
        self._avatars = prefix + "avatars"
        script = self._redis.register_script
        self._cas, self._remove = script(_LIB + _UPDATE), script(_LIB + _REMOVE)
        self._take_lease, self._drop_lease = script(_TAKE_LEASE), script(_DROP_LEASE)
        self._claim_doc = script(_CLAIM_DOC)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, ValueError) as exc:  # ValueError: a malformed URL
            raise StoreError(f"Redis store {self.url}: {exc}") from exc

    def _key(self, avatar: str) -> str:
        return f"{self.prefix}inst:{avatar}"

    def _instances(self, script, *args: object):
        with self._errors():
            return script(args=[self.prefix, *args])

    def ping(self) -> None:
        with self._errors():
            self._redis.ping()

    def record(self, avatar: str) -> Instance | None:
        with self._errors():
            fields = self._redis.hgetall(self._key(avatar))
        return Instance.from_record(fields) if fields else None

    def list(self) -> list[Instance]:
        with self._errors():
            return self._records(self._redis.smembers(self._avatars))

    def _records(self, avatars) -> list[Instance]:
        """The records of these avatars, oldest first, in one round trip (plain reads: on Sentinel
        they wait for no replica); one deleted meanwhile is left out."""
        reads = self._redis.pipeline(transaction=False)
        for avatar in avatars:
            reads.hgetall(self._key(avatar))
        records = [Instance.from_record(r) for r in reads.execute() if r]
        return sorted(records, key=lambda i: (i.created, i.avatar))

    def _update(self, avatar, allowed, expect, add, changes) -> Instance | None:
        allowed = "*" if allowed is None else json.dumps([State(s).value for s in allowed])
        pairs = [part for name, value in changes.items() for part in (name, record_value(value))]
        flat = self._instances(self._cas, avatar, allowed, json.dumps({k: record_value(v) for k, v in expect.items()}),
                               json.dumps({k: int(n) for k, n in add.items()}), *pairs)
        return _instance(flat) if flat else None

    def _atomically(self, decide):
        # Every record is watched before it is read: a write by anyone in between fails the EXEC,
        # and the decision is made again on what is there then. The reads need not be on the
        # watching connection, so they go in one round trip on another.
        deadline = time.monotonic() + _TIMEOUT
        with self._errors(), self._redis.pipeline(transaction=True) as pipe:
            for _ in range(CAS_TRIES):
                try:
                    pipe.watch(self._avatars)
                    avatars = pipe.smembers(self._avatars)
                    if avatars:
                        pipe.watch(*(self._key(a) for a in avatars))
                    result, writes = decide(self._records(avatars))
                    pipe.multi()
                    for instance in writes:
                        pipe.delete(self._key(instance.avatar))
                        pipe.hset(self._key(instance.avatar), mapping=instance.to_record())
                        pipe.sadd(self._avatars, instance.avatar)
                    self._exec(pipe)
                    return result
                except redis.WatchError:
                    if time.monotonic() >= deadline:
                        break
        raise StoreError(f"Redis store {self.url}: the records kept changing for {_TIMEOUT:g} s")

    def _exec(self, pipe) -> None:
        """EXEC, telling a record changed meanwhile (WatchError: decide again) from a connection
        lost on the way, which redis-py also reports as a WatchError: then the writes may or may
        not have been made, and deciding again could apply them twice (a join counted twice). A
        server that answered with an error (a demoted primary's READONLY) made none: decide again."""
        try:
            pipe.execute()
        except redis.WatchError as exc:
            if "occurred while watching" in str(exc) and not _refused(exc):
                raise StoreError(f"Redis store {self.url}: the connection failed while the decision was "
                                 f"written; it may or may not have been ({exc})") from exc
            raise

    def remove(self, avatar: str, state: State) -> bool:
        return bool(self._instances(self._remove, avatar, State(state).value))

    def clock(self) -> float:
        with self._errors():
            seconds, micros = self._redis.time()
        return seconds + micros / 1e6

    def _lease_key(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        # PEXPIRE only clears a long-dead lease; expiry is judged against the store's clock.
        safety_ms = math.ceil(max(ttl, 0) * 2000) + 60_000
        with self._errors():
            return bool(self._take_lease(keys=[self._lease_key(name)],
                                         args=[holder, repr(float(now + ttl)), repr(float(now)), safety_ms]))

    def drop_lease(self, name: str, holder: str) -> None:
        with self._errors():
            self._drop_lease(keys=[self._lease_key(name)], args=[holder])

    def lease_holder(self, name: str, now: float | None = None) -> str | None:
        now = self.clock() if now is None else now
        with self._errors():
            holder, expires = self._redis.hmget(self._lease_key(name), ["holder", "expires"])
        return holder if holder is not None and float(expires) >= now else None

    def add_counts(self, counts: dict[str, float]) -> None:
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            for name, value in counts.items():
                pipe.hincrbyfloat(self._counts, name, float(value))
            pipe.execute()

    def counts(self) -> dict[str, float]:
        with self._errors():
            return {name: float(value) for name, value in self._redis.hgetall(self._counts).items()}

    def _docs(self, kind: str) -> tuple[str, str]:
        return f"{self.prefix}doc:{kind}", f"{self.prefix}doc-expires:{kind}"

    def put_doc(self, kind: str, key: str, value: dict) -> None:
        docs, expiries = self._docs(kind)
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(docs, key, json.dumps(value))
            pipe.hdel(expiries, key)
            pipe.execute()

    def claim_doc(self, kind: str, key: str, value: dict, ttl: float, now: float) -> bool:
        with self._errors():
            return bool(self._claim_doc(keys=list(self._docs(kind)),
                                        args=[key, json.dumps(value), repr(float(now + ttl)), repr(float(now))]))

    def get_doc(self, kind: str, key: str) -> dict | None:
        with self._errors():
            raw = self._redis.hget(self._docs(kind)[0], key)
        return json.loads(raw) if raw is not None else None

    def list_docs(self, kind: str) -> list[dict]:
        with self._errors():
            docs = self._redis.hgetall(self._docs(kind)[0])
        return [json.loads(docs[k]) for k in sorted(docs)]

    def delete_doc(self, kind: str, key: str) -> bool:
        docs, expiries = self._docs(kind)
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(docs, key)
            pipe.hdel(expiries, key)
            return bool(pipe.execute()[0])

    def close(self) -> None:
        self._redis.close()
