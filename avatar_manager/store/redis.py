"""The store in Redis: every step that reads then writes is one Lua script, which Redis runs
atomically, so managers on any number of hosts allocate without races. SqliteStore is the spec.

Layout under the prefix: inst:AVATAR, a hash of Instance.to_record(); avatars, the set of names;
lease, a hash (holder, expires); counts, a hash of counters. The scripts build instance keys from
the prefix rather than taking them as KEYS, so this needs a standalone Redis, not a cluster.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import fields
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..instances import HOLDS_PORT, JOINABLE, Instance, State, record_value
from .base import Busy, CapacityError, Claim, Full, NotFound, Store, StoreError

_FIELDS = frozenset(f.name for f in fields(Instance))
_TIMEOUT = 5.0  # seconds, for connecting and for every reply


def _lua_set(states) -> str:
    return "{" + ", ".join(f"{State(s).value} = true" for s in sorted(states)) + "}"


# Shared by the instance scripts; ARGV[1] is always the prefix.
_LIB = f"""
local PREFIX = ARGV[1]
local JOINABLE = {_lua_set(JOINABLE)}
local HOLDS_PORT = {_lua_set(HOLDS_PORT)}
""" + """
local function key(avatar) return PREFIX .. 'inst:' .. avatar end
local function avatars() return redis.call('SMEMBERS', PREFIX .. 'avatars') end

-- By avatar name, else the oldest record with that instance id.
local function find(k)
  if redis.call('EXISTS', key(k)) == 1 then return k end
  local best, best_created
  for _, a in ipairs(avatars()) do
    local id, created = unpack(redis.call('HMGET', key(a), 'instance_id', 'created'))
    created = tonumber(created)
    if id == k and (not best or created < best_created or (created == best_created and a < best)) then
      best, best_created = a, created
    end
  end
  return best
end

local function join(avatar, now)
  local state = redis.call('HGET', key(avatar), 'state')
  if not (state and JOINABLE[state]) then return false end
  redis.call('HINCRBY', key(avatar), 'connections', 1)
  redis.call('HSET', key(avatar), 'idle_since', '0.0', 'active_at', now)
  return redis.call('HGETALL', key(avatar))
end
"""

_GET = """
local avatar = find(ARGV[2])
return avatar and redis.call('HGETALL', key(avatar))
"""

_LIST = """
local records = {}
for _, a in ipairs(avatars()) do
  local record = redis.call('HGETALL', key(a))
  if #record > 0 then records[#records + 1] = record end
end
return records
"""

_JOIN = "return join(ARGV[2], ARGV[3])"

# ARGV: prefix, avatar, the new record (JSON; the script fills port, gpu and reserved_mb),
# max_instances, ports (JSON), gpus (JSON [[index, free MB], ...]), min_free_mb, gpu_required (1/0).
_CLAIM = """
local avatar, record = ARGV[2], cjson.decode(ARGV[3])
local max_instances, ports, gpus = tonumber(ARGV[4]), cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local min_free, gpu_required = tonumber(ARGV[7]), ARGV[8] == '1'

local joined = join(avatar, record.created)
if joined then return {0, joined} end
if redis.call('HGET', key(avatar), 'state') == 'STOPPING' then
  return redis.error_reply('BUSY:' .. avatar)
end

local held, taken, reserved = 0, {}, {}
for _, a in ipairs(avatars()) do
  local state, port, gpu, mb = unpack(redis.call('HMGET', key(a), 'state', 'port', 'gpu', 'reserved_mb'))
  if a ~= avatar and state and HOLDS_PORT[state] then
    held = held + 1
    taken[tonumber(port)] = true
    if state == 'STARTING' then
      gpu = tonumber(gpu)
      reserved[gpu] = (reserved[gpu] or 0) + tonumber(mb)
    end
  end
end
if held >= max_instances then
  return redis.error_reply('FULL:all MAX_AVATARS=' .. ARGV[4] .. ' instances are in use')
end

local port
for _, p in ipairs(ports) do
  if not taken[p] then port = p; break end
end
if not port then
  return redis.error_reply('CAPACITY:no free port in the avatar port range (AVATAR_BASE_PORT .. + MAX_AVATARS)')
end

-- base.place_on_gpu: the most free after reservations, at least min_free; a tie keeps the earlier.
local best, best_free = -1, -1
for _, g in ipairs(gpus) do
  local free = g[2] - (reserved[g[1]] or 0)
  if free >= min_free and free > best_free then best, best_free = g[1], free end
end
if best < 0 and #gpus > 0 and gpu_required then
  local free = {}
  for _, g in ipairs(gpus) do
    free[#free + 1] = 'GPU ' .. g[1] .. ' ' .. (g[2] - (reserved[g[1]] or 0)) .. ' MB'
  end
  return redis.error_reply('CAPACITY:no GPU has GPU_MIN_FREE_MB=' .. ARGV[7] .. ' MB free (free: '
                           .. table.concat(free, ', ') .. ')')
end

record.port, record.gpu = tostring(port), tostring(best)
record.reserved_mb = best >= 0 and ARGV[7] or '0'
redis.call('DEL', key(avatar))
for field, value in pairs(record) do redis.call('HSET', key(avatar), field, value) end
redis.call('SADD', PREFIX .. 'avatars', avatar)
return {1, redis.call('HGETALL', key(avatar))}
"""

# ARGV: prefix, avatar, the record (JSON), max_instances. Only into a free avatar, port and slot.
_RESTORE = """
local avatar, record, max_instances = ARGV[2], cjson.decode(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', key(avatar)) == 1 then return 0 end
local held = 0
for _, a in ipairs(avatars()) do
  local state, port = unpack(redis.call('HMGET', key(a), 'state', 'port'))
  if state and HOLDS_PORT[state] then
    if tonumber(port) == tonumber(record.port) then return 0 end
    held = held + 1
  end
end
if held >= max_instances then return 0 end
for field, value in pairs(record) do redis.call('HSET', key(avatar), field, value) end
redis.call('SADD', PREFIX .. 'avatars', avatar)
return 1
"""

_DISCONNECT = """
local avatar = find(ARGV[2])
if not avatar then return false end
if ARGV[4] ~= '' and redis.call('HGET', key(avatar), 'token') ~= ARGV[4] then
  return redis.call('HGETALL', key(avatar))
end
local connections = tonumber(redis.call('HGET', key(avatar), 'connections'))
if connections > 0 then
  redis.call('HSET', key(avatar), 'connections', tostring(connections - 1))
  if connections == 1 then redis.call('HSET', key(avatar), 'idle_since', ARGV[3]) end
end
return redis.call('HGETALL', key(avatar))
"""

# ARGV: prefix, avatar, allowed states (JSON), new state, then field, value pairs.
_TRANSITION = """
local state = redis.call('HGET', key(ARGV[2]), 'state')
for _, allowed in ipairs(cjson.decode(ARGV[3])) do
  if allowed == state then
    redis.call('HSET', key(ARGV[2]), 'state', unpack(ARGV, 4))
    return redis.call('HGETALL', key(ARGV[2]))
  end
end
return false
"""

_STOP_IF_IDLE = """
local state, connections, sessions, idle = unpack(redis.call('HMGET', key(ARGV[2]), 'state', 'connections',
                                                             'sessions', 'idle_since'))
if state ~= 'RUNNING' or tonumber(connections) ~= 0 or tonumber(sessions) ~= 0 then return 0 end
idle = tonumber(idle)
if idle > 0 and idle <= tonumber(ARGV[3]) then
  redis.call('HSET', key(ARGV[2]), 'state', 'STOPPING')
  return 1
end
return 0
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


def redacted(url: str) -> str:
    """The URL for messages: without its password or query (which may hold one)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
    return urlunsplit(parts._replace(query=""))


def _instance(flat: list[str]) -> Instance:
    return Instance.from_record(dict(zip(flat[::2], flat[1::2])))


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "avm:") -> None:
        self.url = redacted(url)
        self.prefix = prefix
        self._lease, self._counts = prefix + "lease", prefix + "counts"
        with self._errors():
            # No retries: a script re-sent after a timeout may already have run (a claim would
            # count its connection twice). The pool reconnects stale connections by itself.
            self._redis = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT,
                retry=Retry(NoBackoff(), 0))
        script = self._redis.register_script
        self._get, self._list, self._join = script(_LIB + _GET), script(_LIB + _LIST), script(_LIB + _JOIN)
        self._claim, self._disconnect = script(_LIB + _CLAIM), script(_LIB + _DISCONNECT)
        self._cas, self._stop_if_idle = script(_LIB + _TRANSITION), script(_LIB + _STOP_IF_IDLE)
        self._remove, self._restore = script(_LIB + _REMOVE), script(_LIB + _RESTORE)
        self._take_lease, self._drop_lease = script(_TAKE_LEASE), script(_DROP_LEASE)
        self._claim_doc = script(_CLAIM_DOC)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.ResponseError as exc:
            message = str(exc)
            if message.startswith("FULL:"):
                raise Full(message.removeprefix("FULL:")) from None
            if message.startswith("CAPACITY:"):
                raise CapacityError(message.removeprefix("CAPACITY:")) from None
            if message.startswith("BUSY:"):
                raise Busy(message.removeprefix("BUSY:")) from None
            raise StoreError(f"Redis store {self.url}: {exc}") from exc
        except (redis.RedisError, ValueError) as exc:  # ValueError: a malformed URL
            raise StoreError(f"Redis store {self.url}: {exc}") from exc

    def _instances(self, script, *args: object):
        with self._errors():
            return script(args=[self.prefix, *args])

    def ping(self) -> None:
        with self._errors():
            self._redis.ping()

    def join(self, avatar: str, now: float) -> Instance | None:
        flat = self._instances(self._join, avatar, repr(float(now)))
        return _instance(flat) if flat else None

    def claim(self, claim: Claim) -> tuple[Instance, bool]:
        record = Instance(avatar=claim.avatar, instance_id=claim.instance_id, state=State.STARTING,
                          port=0, gpu=-1, reserved_mb=0, token=claim.token, connections=1,
                          created=claim.now, active_at=claim.now).to_record()
        created, flat = self._instances(
            self._claim, claim.avatar, json.dumps(record), int(claim.max_instances),
            json.dumps([int(p) for p in claim.ports]), json.dumps([[int(i), int(f)] for i, f in claim.gpus]),
            int(claim.min_free_mb), int(bool(claim.gpu_required)))
        return _instance(flat), bool(created)

    def restore(self, instance: Instance, max_instances: int) -> bool:
        return bool(self._instances(self._restore, instance.avatar, json.dumps(instance.to_record()),
                                    int(max_instances)))

    def get(self, key: str) -> Instance | None:
        flat = self._instances(self._get, key)
        return _instance(flat) if flat else None

    def list(self) -> list[Instance]:
        instances = [_instance(flat) for flat in self._instances(self._list)]
        return sorted(instances, key=lambda i: (i.created, i.avatar))

    def disconnect(self, key: str, now: float, token: str | None = None) -> Instance:
        flat = self._instances(self._disconnect, key, repr(float(now)), token or "")
        if not flat:
            raise NotFound(key)
        return _instance(flat)

    def _transition(self, avatar: str, allowed: frozenset[State] | set[State], to: State,
                   **changes: object) -> Instance | None:
        unknown = set(changes) - _FIELDS
        if unknown:  # SqliteStore fails the same way ("no such column"), changing nothing
            raise StoreError(f"Redis store {self.url}: no such field {', '.join(sorted(unknown))}")
        pairs = [part for name, value in changes.items() for part in (name, record_value(value))]
        flat = self._instances(self._cas, avatar, json.dumps([State(s).value for s in allowed]),
                               State(to).value, *pairs)
        return _instance(flat) if flat else None

    def stop_if_idle(self, avatar: str, idle_before: float) -> bool:
        return bool(self._instances(self._stop_if_idle, avatar, repr(float(idle_before))))

    def remove(self, avatar: str, state: State) -> bool:
        return bool(self._instances(self._remove, avatar, State(state).value))

    def take_lease(self, holder: str, ttl: float, now: float) -> bool:
        # Expiry is judged against the caller's clock; PEXPIRE only clears a long-dead lease.
        safety_ms = math.ceil(max(ttl, 0) * 2000) + 60_000
        with self._errors():
            return bool(self._take_lease(keys=[self._lease],
                                         args=[holder, repr(float(now + ttl)), repr(float(now)), safety_ms]))

    def drop_lease(self, holder: str) -> None:
        with self._errors():
            self._drop_lease(keys=[self._lease], args=[holder])

    def lease_holder(self, now: float) -> str | None:
        with self._errors():
            holder, expires = self._redis.hmget(self._lease, ["holder", "expires"])
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
