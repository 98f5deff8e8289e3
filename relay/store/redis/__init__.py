"""The Redis store: several relay instances share one queue, one set of dedup ids and one
set of dead letters.

Each destination's queue is split into partitions by a hash of the person (the ordering
key), one Redis stream each, read through a consumer group: an instance delivers only the
partitions it owns (relay.store.redis.ownership), and an entry stays in the group's pending
list until its delivery is done or dead, so what an instance that died had leased is found
there and taken back (XAUTOCLAIM) after `reclaim_idle`. Every change is one Lua script
(relay.store.redis.scripts), atomic in Redis."""

from relay.store.redis.settings import RedisSchema, RedisSettings
from relay.store.redis.store import RedisStore, partition_of

__all__ = ["RedisSchema", "RedisSettings", "RedisStore", "partition_of"]
