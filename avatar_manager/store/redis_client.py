"""The store's Redis client, from REDIS_URL: one server (redis://, rediss://, unix://, as redis-py
reads them) or the primary that Redis Sentinel watches over:

    redis+sentinel://[[user]:password@]host1:26379,host2:26379/SERVICE_NAME[/DB][?sentinel_password=...]

(rediss+sentinel:// is the same over TLS, to the Sentinels and to Redis; a host without a port is
on 26379; the password is Redis's, and sentinel_password the Sentinels' own if they need one).
redis-py's Sentinel finds the primary, and asks again whenever a connection fails or finds its
server demoted, so after a failover the next command reaches the new primary.

Replication is asynchronous: a write the primary acknowledged can be missing from the replica
Sentinel promotes. On Sentinel, every script and every MULTI/EXEC is therefore followed by
WAIT 1 on its own connection (WAIT only counts the writes of the connection it is sent on, and a
pool hands out any connection, so it cannot be a separate command afterwards): the store answers
only once a replica has the write, and raises (StoreError) when none acknowledged it in time.
A script waits even if it only read (the client cannot tell; the store reads without scripts),
and a pipeline of plain reads does not wait: with no replica, writes answer StoreError and reads
still work.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS
SENTINEL_PORT = 26379
_EXAMPLE = "redis+sentinel://host1:26379,host2:26379/mymaster"


class NotReplicated(redis.RedisError):
    """No replica acknowledged a write in time: a failover now could lose it."""


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    tls: bool


def redacted(url: str) -> str:
    """The URL for messages: without its password or query (which may hold one)."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
    return urlunsplit(parts._replace(query=""))


def check(url: str) -> SentinelTarget | None:
    """ValueError saying what is wrong with the URL, worded to follow "REDIS_URL "; the Sentinel
    target it names, or None for one server (whose URL redis-py reads when connecting)."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_target(url)
    if scheme not in PLAIN_SCHEMES:
        raise ValueError(f"must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// "
                         f"(its scheme is {scheme!r})")
    return None


def _sentinel_target(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        if not host:
            raise ValueError(f"names no Sentinel (or an empty one): list them as host:port, separated by commas "
                             f"(e.g. {_EXAMPLE})")
        try:
            address = urlsplit("//" + host)
            port = address.port  # ValueError for one that is not a number
        except ValueError as exc:
            raise ValueError(f"has a Sentinel address {host!r} that is not host:port ({exc})") from None
        port = SENTINEL_PORT if port is None else port
        if not address.hostname or not 0 < port < 65536:
            raise ValueError(f"has a Sentinel address {host!r} that is not host:port (e.g. {_EXAMPLE})")
        sentinels.append((address.hostname, port))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError(f"names no Sentinel service: add /SERVICE_NAME after the hosts (e.g. {_EXAMPLE})")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError(f"has {parts.path!r} after the hosts; expected /SERVICE_NAME or /SERVICE_NAME/DB "
                         f"(a database number)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"has unknown parameter(s) {', '.join(unknown)} (only sentinel_password is read)")
    return SentinelTarget(sentinels=sentinels, service=segments[0], db=int(segments[1]) if len(segments) == 2 else 0,
                          username=unquote(username) or None, password=unquote(password) or None,
                          sentinel_password=query.get("sentinel_password", [""])[-1] or None,
                          tls=SENTINEL_SCHEMES[parts.scheme])


def connect(url: str, timeout: float) -> redis.Redis:
    """A client for REDIS_URL, every reply (and connection) within `timeout` seconds; ValueError
    for a malformed URL. Nothing is sent until the first command."""
    # No retries: a script re-sent after a timeout may already have run (a claim would count its
    # connection twice). The pool reconnects stale connections by itself, and on Sentinel asks
    # where the primary is whenever it connects.
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    target = check(url)
    if target is None:
        return redis.Redis.from_url(url, decode_responses=True, **options)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs={**options, "password": target.sentinel_password,
                                                           "ssl": target.tls})
    client = sentinel.master_for(target.service, redis_class=_Replicated, decode_responses=True, db=target.db,
                                 username=target.username, password=target.password, ssl=target.tls,
                                 connection_class=_SentinelSSLConnection if target.tls else _SentinelConnection,
                                 **options)
    client.sentinel = sentinel
    client.wait_ms = int(timeout * 500)  # half the reply timeout: WAIT answers before the socket gives up
    return client


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the primary that, dropped, reconnects to where Sentinel says the primary is.
    redis-py 8.1 reconnects a dropped connection on its next command to the address it had
    (redis/redis-py#3874): after a failover, the old primary, demoted, answering every write
    READONLY, again and again (a WATCH/MULTI never gets through)."""

    def send_packed_command(self, command, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # asks Sentinel
        super().send_packed_command(command, check_health)


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


def _wait_for_a_replica(connection, wait_ms: int) -> None:
    """Return once a replica has every write made on this connection; raise otherwise."""
    connection.send_command("WAIT", 1, wait_ms)
    try:
        acked = connection.read_response()
    except redis.ResponseError:
        # "WAIT cannot be used with replica instances": this server was demoted. Reconnecting asks
        # Sentinel for the primary.
        connection.disconnect()
        raise
    if acked < 1:
        # A primary no replica follows may have been deposed by a failover (its writes are then
        # lost): reconnect, which asks Sentinel where the primary is now.
        connection.disconnect()
        raise NotReplicated(f"no replica acknowledged the write within {wait_ms} ms "
                            f"(on {connection.host}:{connection.port}); a failover could lose it")


# Commands that never write: a pipeline of only these (the store's batched reads) has nothing to wait for.
_READS = frozenset({"HGETALL", "HGET", "HMGET", "SMEMBERS", "EXISTS", "GET", "TIME"})


class _ReplicatedPipeline(Pipeline):
    """WAIT after the commands, on their connection, before the pipeline gives it back to the pool.
    _execute_transaction and _execute_pipeline are redis-py's own (8.1.0, pinned): the one place
    where that connection is at hand."""
    wait_ms: int

    def _execute_transaction(self, connection, commands, raise_on_error):
        result = super()._execute_transaction(connection, commands, raise_on_error)
        _wait_for_a_replica(connection, self.wait_ms)
        return result

    def _execute_pipeline(self, connection, commands, raise_on_error):
        result = super()._execute_pipeline(connection, commands, raise_on_error)
        if any(str(args[0]).upper() not in _READS for args, _ in commands):  # a script may write
            _wait_for_a_replica(connection, self.wait_ms)
        return result


class _Replicated(redis.Redis):
    """The primary's client: a script or a MULTI/EXEC answers once a replica has its writes."""
    sentinel: Sentinel
    wait_ms: int

    def pipeline(self, transaction: bool = True, shard_hint=None) -> Pipeline:
        pipe = _ReplicatedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.wait_ms = self.wait_ms
        return pipe

    def evalsha(self, sha: str, numkeys: int, *keys_and_args):
        # A script may write: it and its WAIT go on one connection, the pipeline's.
        pipe = self.pipeline(transaction=False)
        pipe.evalsha(sha, numkeys, *keys_and_args)
        (result,) = pipe.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result  # NoScriptError included: Script loads the script and calls again
        return result

    def close(self) -> None:
        super().close()
        self.sentinel.close()
