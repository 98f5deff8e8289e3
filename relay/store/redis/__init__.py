"""The Redis store: several relay instances share one queue, one set of dedup ids and one
set of dead letters.

Each destination's queue is split into partitions by a hash of the person (the ordering
key), one Redis stream each, read through a consumer group: an instance delivers only the
partitions it owns (relay.store.redis.ownership), and an entry stays in the group's pending
list until its delivery is done or dead, so what an instance that died had leased is found
there and taken back (XAUTOCLAIM) after `reclaim_idle`. Every change is one Lua script
(relay.store.redis.scripts), atomic in Redis.

The store itself is in relay.store.redis.store, imported only where `storage.redis` is used:
redis-py is an optional dependency, and a relay on SQLite does not load it (6 MB less
resident memory)."""
