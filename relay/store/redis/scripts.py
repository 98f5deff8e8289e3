"""The Redis store's Lua scripts. Each runs atomically in Redis: an enqueue, a lease or a
settlement is all done or not begun, and no other instance sees it half done.

Keys, under the prefix P (`storage.redis.key_prefix`):
- P next, P next_rejected: the last delivery id and rejected message id given out;
- P pending: deliveries not dead (what `max_pending` limits);
- P counts: a hash, "<destination>\\n<state>" -> deliveries in that state;
- P dests: the destinations ever queued for; P age:<dest>: a sorted set of the deliveries
  waiting for it (pending or leased) by when they were queued;
- P d:<id>: a delivery (hash) and P d:<id>:h its failed attempts ("<time>\\0<answer>");
  its message is the string P m:<m>, `m` one of its fields. An event routed as it came
  to several destinations keeps it once, under the first of those deliveries' ids, with
  P m:<m>:n counting the others not yet deleted; a delivery with a message of its own (one
  destination, or a route that reshaped it) has it under its own id, with no count. Out of
  the hash, a message (longer than Redis's 64-byte bound for a compact hash field) no
  longer makes each delivery's hash a full hash table. Deliveries stored by earlier versions
  hold `msg` in the hash instead, and are read as they are;
- per destination and partition, Q = P q:<dest>:<n>:
  - Q:s, a stream with the consumer group "relay": new deliveries, one entry each. An entry
    stays pending in the group (its PEL) until its delivery is done or dead, so the
    deliveries of an instance that died are found and taken back with XAUTOCLAIM;
  - Q:w, deliveries read from the stream that may be leased, by id (oldest first);
  - Q:r, retries, by the time they are due;
  - Q:h, holds: "<person>\\0<id>" for every delivery leased or waiting for its retry (all at
    score 0, so that a person's lowest hold is found by lexical range);
  - Q:k:<person>, the person's deliveries parked behind a hold, back in Q:w when the last
    hold goes;
- P dead: dead deliveries by id; P rej: rejected messages by id, each in P rj:<id>;
- P id:<kind>\\0<source>\\0<id>: a dedup id, expiring when its window ends.

The scripts name the keys they use from the prefix instead of declaring them: relay runs
against one Redis server (or a primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

GROUP = "relay"

_COMMON = r"""
local P = ARGV[1]
local function pad(id) return string.format('%020d', tonumber(id)) end
local function queue(dest, part) return P .. 'q:' .. dest .. ':' .. part end
local function count(dest, state, by)
  redis.call('HINCRBY', P .. 'counts', dest .. '\n' .. state, by)
end
local function first_hold(q, okey)
  local r = redis.call('ZRANGEBYLEX', q .. ':h', '[' .. okey .. '\0', '(' .. okey .. '\1',
                       'LIMIT', 0, 1)
  if r[1] then return tonumber(string.sub(r[1], #okey + 2)) end
  return nil
end
local function unhold(q, okey, id)
  redis.call('ZREM', q .. ':h', okey .. '\0' .. pad(id))
  if not first_hold(q, okey) then
    -- Back among the ready ones, one by one: ZUNIONSTORE would rewrite the whole ready set
    -- (560 µs a call with a backlog, most of a lease's time), for a person's few.
    local parked = q .. ':k:' .. okey
    local ids = redis.call('ZRANGE', parked, 0, -1)
    if #ids > 0 then
      for _, parked_id in ipairs(ids) do redis.call('ZADD', q .. ':w', parked_id, parked_id) end
      redis.call('DEL', parked)
    end
  end
end
local function ensure_group(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, 'relay', '0', 'MKSTREAM')
  end
end
-- A leased delivery back to the queue, untouched.
local function release(id)
  local key = P .. 'd:' .. id
  local d = redis.call('HMGET', key, 'state', 'dest', 'part', 'okey')
  if d[1] ~= 'leased' then return 0 end
  local q = queue(d[2], d[3])
  redis.call('HSET', key, 'state', 'pending')
  redis.call('ZADD', q .. ':w', id, id)
  unhold(q, d[4], id)
  count(d[2], 'leased', -1)
  count(d[2], 'pending', 1)
  return 1
end
-- A delivery's message, from its `msg` (stored by earlier versions) or its `m`.
local function message_of(msg, m)
  if msg then return msg end
  return redis.call('GET', P .. 'm:' .. m)
end
-- A delivery whose message is P m:<m> (`m`, or false) was deleted: the last of those
-- sharing it takes it along (a message of one delivery has no count, read as 0).
local function forget_message(m)
  if m and redis.call('DECR', P .. 'm:' .. m .. ':n') < 0 then
    redis.call('DEL', P .. 'm:' .. m, P .. 'm:' .. m .. ':n')
  end
end
-- The delivery leaves the stream's group: done or dead.
local function ack(q, entry)
  redis.call('XACK', q .. ':s', 'relay', entry)
  redis.call('XDEL', q .. ':s', entry)
end
"""

# ARGV: prefix, max_pending, new deliveries, event count, then per event: kind, source,
# dedup id ("" for none), dedup until (unix ms), rejected reason ("" for none), received
# at, ordering key, partition, message, delivery count, then per delivery: destination and
# its routed message ("" for the event's own, else "=" and the message).
# Returns the outcomes, or {"full", pending}.
ENQUEUE = (
    _COMMON
    + r"""
local pending = tonumber(redis.call('GET', P .. 'pending') or '0')
if pending + tonumber(ARGV[3]) > tonumber(ARGV[2]) then return {'full', pending} end
local out = {}
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local kind, source, dedup, until_ms = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local rejected, received, okey, part = ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7]
  local msg, n = ARGV[i+8], tonumber(ARGV[i+9])
  i = i + 10
  local dup = false
  if dedup ~= '' then
    -- Taken only if no window of the same id is open; expires when this one ends.
    local key = P .. 'id:' .. kind .. '\0' .. source .. '\0' .. dedup
    dup = not redis.call('SET', key, '1', 'NX', 'PXAT', math.max(1, tonumber(until_ms)))
  end
  if dup then
    out[#out + 1] = 'duplicate'
  elseif rejected ~= '' then
    local rid = redis.call('INCR', P .. 'next_rejected')
    redis.call('HSET', P .. 'rj:' .. rid, 'source', source, 'kind', kind, 'at', received,
               'reason', rejected, 'msg', msg)
    redis.call('ZADD', P .. 'rej', rid, rid)
    out[#out + 1] = 'rejected'
  else
    -- The deliveries with the event's message as it came share one copy of it.
    local sharing = 0
    for k = 0, n - 1 do
      if ARGV[i + 2 * k + 1] == '' then sharing = sharing + 1 end
    end
    local shared = nil
    for k = 0, n - 1 do
      local dest, routed = ARGV[i + 2 * k], ARGV[i + 2 * k + 1]
      local id = redis.call('INCR', P .. 'next')
      local m = id
      if routed ~= '' then
        redis.call('SET', P .. 'm:' .. id, string.sub(routed, 2))
      elseif shared then
        m = shared
      else
        shared = id
        redis.call('SET', P .. 'm:' .. id, msg)
        if sharing > 1 then redis.call('SET', P .. 'm:' .. id .. ':n', sharing - 1) end
      end
      local q = queue(dest, part)
      ensure_group(q .. ':s')
      local entry = redis.call('XADD', q .. ':s', '*', 'i', id)
      redis.call('HSET', P .. 'd:' .. id, 'dest', dest, 'okey', okey, 'part', part,
                 'state', 'pending', 'attempts', 0, 'next_at', received, 'created_at', received,
                 'source', source, 'kind', kind, 'm', m, 'entry', entry)
      redis.call('ZADD', P .. 'age:' .. dest, received, id)
      redis.call('SADD', P .. 'dests', dest)
      count(dest, 'pending', 1)
      pending = pending + 1
    end
    out[#out + 1] = 'queued'
  end
  i = i + 2 * n
end
redis.call('SET', P .. 'pending', pending)
return out
"""
)

# ARGV: prefix, destination, consumer, limit, now, then the partitions to lease from.
# Returns {id, ordering key, attempts, created at, source, kind, message, partition,
# stream entry} for each delivery leased, oldest first across the partitions.
LEASE = (
    _COMMON
    + r"""
local dest, consumer, limit, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local heads = {}
for a = 6, #ARGV do
  local part = ARGV[a]
  local q = queue(dest, part)
  -- Retries that are due may be leased again (they hold their person meanwhile).
  local due = redis.call('ZRANGEBYSCORE', q .. ':r', '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    for _, id in ipairs(due) do redis.call('ZADD', q .. ':w', id, id) end
    redis.call('ZREM', q .. ':r', unpack(due))
  end
  -- New deliveries from the stream, while few are ready.
  if redis.call('ZCARD', q .. ':w') < limit and redis.call('EXISTS', q .. ':s') == 1 then
    local read = redis.call('XREADGROUP', 'GROUP', 'relay', consumer, 'COUNT', limit,
                            'STREAMS', q .. ':s', '>')
    if read then
      for _, e in ipairs(read[1][2]) do redis.call('ZADD', q .. ':w', e[2][2], e[2][2]) end
    end
  end
  heads[#heads + 1] = {q = q, part = part, kept = 0, ids = {}, pos = 1, blocked = {}}
end
-- The next ready delivery of a partition (nil when it has none left): read 100 at a time,
-- from past those kept in the set (blocked for this lease); the others left it.
local function peek(h)
  if h.pos > #h.ids then
    if h.done then return nil end
    h.ids = redis.call('ZRANGE', h.q .. ':w', h.kept, h.kept + 99)
    h.pos = 1
    if #h.ids < 100 then h.done = true end
    if #h.ids == 0 then return nil end
  end
  return tonumber(h.ids[h.pos])
end
-- The partitions' ready deliveries merged by id: each is leased, parked behind its
-- person's hold, or kept (not due on this clock, or its person's earlier one is).
local out, holds, looked = {}, {}, 0
while #out < limit and looked < limit * 10 do
  local best, best_id = nil, nil
  for _, h in ipairs(heads) do
    local id = peek(h)
    if id and (not best_id or id < best_id) then best, best_id = h, id end
  end
  if not best then break end
  looked = looked + 1
  best.pos = best.pos + 1
  local id, q = best_id, best.q
  local key = P .. 'd:' .. id
  local d = redis.call('HMGET', key, 'state', 'okey', 'next_at')
  local okey = d[2]
  if d[1] ~= 'pending' then
    redis.call('ZREM', q .. ':w', id)
  elseif best.blocked[okey] then
    best.kept = best.kept + 1
  else
    -- Holds as they were before this lease: one lease may carry a person's deliveries.
    local held = holds[okey]
    if held == nil then held = first_hold(q, okey) or false; holds[okey] = held end
    if held and held < id then
      redis.call('ZREM', q .. ':w', id)
      redis.call('ZADD', q .. ':k:' .. okey, id, id)
    elseif tonumber(d[3]) > now then
      best.blocked[okey] = true  -- not due on this clock; the person's later ones wait too
      best.kept = best.kept + 1
    else
      redis.call('HSET', key, 'state', 'leased')
      redis.call('ZREM', q .. ':w', id)
      redis.call('ZADD', q .. ':h', 0, okey .. '\0' .. pad(id))
      local f = redis.call('HMGET', key, 'attempts', 'created_at', 'source', 'kind', 'msg',
                           'entry', 'm')
      -- Its entry is this consumer's now, and fresh: not taken back while it is in flight.
      redis.call('XCLAIM', q .. ':s', 'relay', consumer, 0, f[6], 'JUSTID')
      out[#out + 1] = {id, okey, f[1], f[2], f[3], f[4], message_of(f[5], f[7]), best.part, f[6]}
    end
  end
end
if #out > 0 then
  count(dest, 'pending', -#out)
  count(dest, 'leased', #out)
end
return out
"""
)

# ARGV: prefix, now, then operations: "x" id reason (dead), "r" id next_at error (retry),
# "d" id (done), "l" id (release), in that order of kinds.
SETTLE = (
    _COMMON
    + r"""
local now = ARGV[2]
local pending = 0
local i = 3
while i <= #ARGV do
  local op, id = ARGV[i], ARGV[i + 1]
  local key = P .. 'd:' .. id
  local d = redis.call('HMGET', key, 'state', 'dest', 'part', 'okey', 'entry', 'm')
  local state = d[1]
  if op == 'l' then
    release(id)
    i = i + 2
  elseif not state or state == 'dead' then
    if op == 'd' then i = i + 2 else i = i + 3 end
    if op == 'r' then i = i + 1 end
  else
    local dest, okey = d[2], d[4]
    local q = queue(dest, d[3])
    count(dest, state, -1)
    if op == 'd' then
      unhold(q, okey, id)
      ack(q, d[5])
      redis.call('DEL', key, key .. ':h')
      forget_message(d[6])
      redis.call('ZREM', P .. 'age:' .. dest, id)
      redis.call('ZREM', q .. ':w', id)
      redis.call('ZREM', q .. ':r', id)
      pending = pending - 1
      i = i + 2
    elseif op == 'x' then
      local reason = ARGV[i + 2]
      unhold(q, okey, id)
      ack(q, d[5])
      redis.call('HSET', key, 'state', 'dead', 'err', reason, 'next_at', now)
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('RPUSH', key .. ':h', now .. '\0' .. reason)
      redis.call('ZREM', P .. 'age:' .. dest, id)
      redis.call('ZREM', q .. ':w', id)
      redis.call('ZREM', q .. ':r', id)
      redis.call('ZADD', P .. 'dead', id, id)
      count(dest, 'dead', 1)
      pending = pending - 1
      i = i + 3
    else  -- 'r': the hold stays, so the person's later deliveries wait for this one
      local next_at, err = ARGV[i + 2], ARGV[i + 3]
      redis.call('HSET', key, 'state', 'pending', 'next_at', next_at, 'err', err)
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('RPUSH', key .. ':h', now .. '\0' .. err)
      redis.call('ZADD', q .. ':h', 0, okey .. '\0' .. pad(id))
      redis.call('ZREM', q .. ':w', id)
      redis.call('ZADD', q .. ':r', next_at, id)
      count(dest, 'pending', 1)
      i = i + 4
    end
  end
end
if pending ~= 0 then redis.call('INCRBY', P .. 'pending', pending) end
return 0
"""
)

# ARGV: prefix, now, then delivery ids. Dead ones go back to the queue as new.
REPLAY = (
    _COMMON
    + r"""
local now = ARGV[2]
local replayed = 0
for a = 3, #ARGV do
  local id = ARGV[a]
  local key = P .. 'd:' .. id
  local d = redis.call('HMGET', key, 'state', 'dest', 'part')
  if d[1] == 'dead' then
    local q = queue(d[2], d[3])
    ensure_group(q .. ':s')
    local entry = redis.call('XADD', q .. ':s', '*', 'i', id)
    redis.call('HSET', key, 'state', 'pending', 'attempts', 0, 'next_at', now,
               'created_at', now, 'err', '', 'entry', entry)
    redis.call('DEL', key .. ':h')
    redis.call('ZREM', P .. 'dead', id)
    redis.call('ZADD', P .. 'age:' .. d[2], now, id)
    count(d[2], 'dead', -1)
    count(d[2], 'pending', 1)
    replayed = replayed + 1
  end
end
if replayed > 0 then redis.call('INCRBY', P .. 'pending', replayed) end
return replayed
"""
)

# ARGV: prefix, dead delivery count, their ids, then rejected message ids.
DISCARD = (
    _COMMON
    + r"""
local n = tonumber(ARGV[2])
local gone = 0
for a = 3, 2 + n do
  local id = ARGV[a]
  local key = P .. 'd:' .. id
  local d = redis.call('HMGET', key, 'state', 'dest', 'm')
  if d[1] == 'dead' then
    redis.call('DEL', key, key .. ':h')
    forget_message(d[3])
    redis.call('ZREM', P .. 'dead', id)
    count(d[2], 'dead', -1)
    gone = gone + 1
  end
end
for a = 3 + n, #ARGV do
  gone = gone + redis.call('DEL', P .. 'rj:' .. ARGV[a])
  redis.call('ZREM', P .. 'rej', ARGV[a])
end
return gone
"""
)

# ARGV: prefix, destination, partition, consumer, min idle (ms), mode. Mode "own": the
# entries this consumer name had when its last process stopped; "idle": every entry no
# consumer touched for min idle (their instance died), by XAUTOCLAIM. Leased deliveries
# among them go back to the queue; the others (waiting for a retry, parked) stay as they
# are, now this consumer's. Returns how many deliveries went back.
RECLAIM = (
    _COMMON
    + r"""
local dest, part, consumer, idle, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local stream = queue(dest, part) .. ':s'
if redis.call('EXISTS', stream) == 0 then return 0 end
local back = 0
local function take(entries)
  for _, e in ipairs(entries) do
    if e[2] then back = back + release(e[2][2]) end
  end
end
if mode == 'own' then
  local start = '-'
  while true do
    local pel = redis.call('XPENDING', stream, 'relay', start, '+', 1000, consumer)
    if #pel == 0 then break end
    local ids = {}
    for _, p in ipairs(pel) do ids[#ids + 1] = p[1] end
    take(redis.call('XCLAIM', stream, 'relay', consumer, 0, unpack(ids)))
    if #pel < 1000 then break end
    start = '(' .. pel[#pel][1]
  end
else
  local cursor = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', stream, 'relay', consumer, idle, cursor, 'COUNT', 1000)
    cursor = r[1]
    take(r[2])
  until cursor == '0-0'
end
return back
"""
)
