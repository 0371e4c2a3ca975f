-- One node's flush: applies its operations, keeps the node registry, sweeps a bounded batch of
-- expired holds and dead nodes' holds, and returns the view. Every key starts with the prefix
-- "{ns}:" taken from KEYS[1] ("{ns}:epoch"), so one hash tag keeps them on one Redis Cluster slot.
--
-- ARGV: node name, node timeout (ms), sweep batch, mode ("f" flush, "b" bye, "k" bye that
-- keeps: a restart is coming, so this node's holds stay "parked" until their own expiry, never
-- released at once nor as a dead node's), then operations:
--   "u" id kind user sortkey page ttl_ms seen_age_ms active_age_ms   (kind: g b m h)
--   "r" id     release this node's hold
--   "l" id     leave: end the session for every holder
-- Nodes send ages and time left, never timestamps: Redis TIME scores everything.
--
-- Returns {epoch, fresh, now_ms, live nodes, sessions, guests, bots, members, hidden,
--          peak online, peak at (ms), done}.
local P = string.sub(KEYS[1], 1, #KEYS[1] - 5)
local E, C, U, M, PG = P .. 'epoch', P .. 'c', P .. 'u', P .. 'm', P .. 'p'
local N, NN, NID, DEAD, PEAK, SEQ = P .. 'n', P .. 'nn', P .. 'nid', P .. 'dead', P .. 'peak', P .. 'nseq'
local PARKED = P .. 'parked'

-- Sessions and holds live in 4096 buckets by id, so that each bucket stays small enough
-- for Redis's compact encodings (listpack: ~30 bytes an entry instead of ~100) up to about
-- 500k sessions per node (more with a larger hash-/zset-max-listpack-entries).
local function bucket(id)
  return string.byte(id, 1) * 16 + math.floor(string.byte(id, 2) / 16)
end
local function skey(id)
  return P .. 's:' .. bucket(id)
end
-- A node's holds: bucket zsets scored by expiry, and an index of the buckets by (a lower
-- bound of) their earliest expiry, so a sweep visits only buckets with something due.
local function hkey(num, b)
  return P .. 'h:' .. num .. ':' .. b
end
local function hmin(num)
  return P .. 'hm:' .. num
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, timeout, batch, mode = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]

-- The epoch names this data set: a Redis that lost its data gets a new one, and every node
-- then sends all its live sessions again.
local epoch = redis.call('GET', E)
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', E, epoch)
end

local function incr(field, d)
  redis.call('HINCRBY', C, field, d)
end

-- A user: {listed sessions, hidden sessions, sort key, last seen ms, last active ms}.
local function user_get(user)
  local v = redis.call('HGET', U, user)
  if v then
    return cmsgpack.unpack(v)
  end
  return nil
end

local function member_key(rec, user)
  return rec[3] .. '\0' .. user
end

local function user_apply(user, kind, sortkey, d, seen, active)
  local rec = user_get(user) or { 0, 0, sortkey, 0, 0 }
  local was_listed = rec[1] > 0
  local was_hidden = rec[1] == 0 and rec[2] > 0
  if kind == 'm' then rec[1] = rec[1] + d else rec[2] = rec[2] + d end
  if rec[1] < 0 then rec[1] = 0 end
  if rec[2] < 0 then rec[2] = 0 end
  if seen and seen > rec[4] then rec[4] = seen end
  if active and active > rec[5] then rec[5] = active end
  local listed = rec[1] > 0
  local hidden = rec[1] == 0 and rec[2] > 0
  if was_listed ~= listed then
    if listed then
      incr('members', 1)
      redis.call('ZADD', M, 0, member_key(rec, user))
    else
      incr('members', -1)
      redis.call('ZREM', M, member_key(rec, user))
    end
  end
  if was_hidden ~= hidden then incr('hidden', hidden and 1 or -1) end
  if rec[1] == 0 and rec[2] == 0 then
    redis.call('HDEL', U, user)
  else
    redis.call('HSET', U, user, cmsgpack.pack(rec))
  end
  return rec
end

local function user_seen(user, seen, active)
  local rec = user_get(user)
  if rec and (seen > rec[4] or active > rec[5]) then
    if seen > rec[4] then rec[4] = seen end
    if active > rec[5] then rec[5] = active end
    redis.call('HSET', U, user, cmsgpack.pack(rec))
  end
end

-- Page counts (sessions) and, for signed-in users, the page's users in name order.
local function page_apply(page, user, rec, d)
  if page == '' then return end
  local n = tonumber(redis.call('ZINCRBY', PG, d, page))
  if n <= 0 then redis.call('ZREM', PG, page) end
  if user ~= '' then
    local pu, pm = P .. 'pu:' .. page, P .. 'pm:' .. page
    local c = redis.call('HINCRBY', pu, user, d)
    if c <= 0 then
      redis.call('HDEL', pu, user)
      redis.call('ZREM', pm, member_key(rec, user))
    elseif c == 1 and d > 0 then
      redis.call('ZADD', pm, 0, member_key(rec, user))
    end
  end
end

-- A session: {kind, user, page, holders}. Adds (d = 1) or removes (d = -1) its counts.
local function session_apply(s, d, sortkey, seen, active)
  incr('sessions', d)
  local kind, user, page = s[1], s[2], s[3]
  if kind == 'g' then
    incr('guests', d)
    page_apply(page, '', nil, d)
  elseif kind == 'b' then
    incr('bots', d)
    page_apply(page, '', nil, d)
  elseif d > 0 then
    local rec = user_apply(user, kind, sortkey, d, seen, active)
    page_apply(page, user, rec, d)
  else
    -- the page first: the user's record (its sort key) goes with its last session
    local rec = user_get(user) or { 0, 0, string.lower(user), 0, 0 }
    page_apply(page, user, rec, d)
    user_apply(user, kind, rec[3], d)
  end
end

local function session_end(id, s)
  redis.call('HDEL', skey(id), id)
  session_apply(s, -1)
end

local function release(id, num)
  if redis.call('ZREM', hkey(num, bucket(id)), id) == 0 then return end
  local v = redis.call('HGET', skey(id), id)
  if not v then return end
  local s = cmsgpack.unpack(v)
  s[4] = s[4] - 1
  if s[4] <= 0 then
    session_end(id, s)
  else
    redis.call('HSET', skey(id), id, cmsgpack.pack(s))
  end
end

-- This node.
local me = redis.call('HGET', NN, name)
local fresh = 0
if not me then
  if mode == 'b' or mode == 'k' then
    me = nil
  else
    me = tostring(redis.call('INCR', SEQ))
    redis.call('HSET', NN, name, me)
    redis.call('HSET', NID, me, name)
    fresh = 1
  end
end
if me then redis.call('ZADD', N, now, me) end

-- Nodes silent for the timeout: their holds are released below, in batches.
local gone = redis.call('ZRANGEBYSCORE', N, '-inf', '(' .. (now - timeout))
for _, num in ipairs(gone) do
  redis.call('ZREM', N, num)
  redis.call('SADD', DEAD, num)
  local nm = redis.call('HGET', NID, num)
  redis.call('HDEL', NID, num)
  if nm and redis.call('HGET', NN, nm) == num then redis.call('HDEL', NN, nm) end
end
local live = redis.call('ZRANGE', N, 0, -1)
local dead = redis.call('SMEMBERS', DEAD)
local parked = redis.call('SMEMBERS', PARKED)

local function leave(id)
  local v = redis.call('HGET', skey(id), id)
  if not v then return end
  local b = bucket(id)
  for _, num in ipairs(live) do redis.call('ZREM', hkey(num, b), id) end
  for _, num in ipairs(dead) do redis.call('ZREM', hkey(num, b), id) end
  for _, num in ipairs(parked) do redis.call('ZREM', hkey(num, b), id) end
  session_end(id, cmsgpack.unpack(v))
end

local function upsert(id, kind, user, sortkey, page, ttl, seen, active)
  local b = bucket(id)
  local added = redis.call('ZADD', hkey(me, b), now + ttl, id)
  redis.call('ZADD', hmin(me), 'LT', now + ttl, b)
  local S = skey(id)
  local v = redis.call('HGET', S, id)
  if v then
    local s = cmsgpack.unpack(v)
    if added == 1 then s[4] = s[4] + 1 end
    -- A node that saw only touches knows no page: it does not erase another node's.
    if page == '' then page = s[3] end
    if s[1] == kind and s[2] == user and s[3] ~= page then
      -- a page change: the user's counts stay as they are
      local rec = nil
      if user ~= '' then
        rec = user_get(user) or { 0, 0, sortkey, 0, 0 }
        page_apply(s[3], user, rec, -1)
        page_apply(page, user, rec, 1)
        user_seen(user, seen, active)
      else
        page_apply(s[3], '', nil, -1)
        page_apply(page, '', nil, 1)
      end
      s[3] = page
      redis.call('HSET', S, id, cmsgpack.pack(s))
    elseif s[1] ~= kind or s[2] ~= user or s[3] ~= page then
      session_apply(s, -1)
      s[1], s[2], s[3] = kind, user, page
      session_apply(s, 1, sortkey, seen, active)
      redis.call('HSET', S, id, cmsgpack.pack(s))
    else
      -- a renewal: only the hold's expiry (and a user's last seen) moves
      if user ~= '' then user_seen(user, seen, active) end
      if added == 1 then redis.call('HSET', S, id, cmsgpack.pack(s)) end
    end
  else
    local s = { kind, user, page, 1 }
    session_apply(s, 1, sortkey, seen, active)
    redis.call('HSET', S, id, cmsgpack.pack(s))
  end
end

local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'u' then
    if me then
      upsert(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]),
        now - tonumber(ARGV[i + 7]), now - tonumber(ARGV[i + 8]))
    end
    i = i + 9
  elseif op == 'r' then
    if me then release(ARGV[i + 1], me) end
    i = i + 2
  elseif op == 'l' then
    leave(ARGV[i + 1])
    i = i + 2
  else
    return redis.error_reply('presence flush: unknown operation ' .. tostring(op))
  end
end

-- Bounded sweeps: dead nodes' holds first, then expired holds of live nodes, then (bye)
-- this node's own.
local budget = batch

-- Releases the holds of `num` due by `upto` (all of them when nil), bucket by bucket, within
-- the budget; returns whether none is left.
local function sweep(num, upto)
  local index = hmin(num)
  while budget > 0 do
    local due
    if upto then
      due = redis.call('ZRANGEBYSCORE', index, '-inf', upto, 'LIMIT', 0, 16)
    else
      due = redis.call('ZRANGE', index, 0, 15)
    end
    if #due == 0 then return true end
    for _, b in ipairs(due) do
      local h = hkey(num, b)
      local ids
      if upto then
        ids = redis.call('ZRANGEBYSCORE', h, '-inf', upto, 'LIMIT', 0, budget)
      else
        ids = redis.call('ZRANGE', h, 0, budget - 1)
      end
      for _, id in ipairs(ids) do release(id, num) end
      budget = budget - #ids - 1
      local first = redis.call('ZRANGE', h, 0, 0, 'WITHSCORES')
      if #first == 0 then
        redis.call('ZREM', index, b)
      else
        redis.call('ZADD', index, first[2], b)
      end
      if budget <= 0 then return false end
    end
  end
  return false
end

for _, num in ipairs(dead) do
  if budget <= 0 then break end
  if sweep(num, nil) then
    redis.call('SREM', DEAD, num)
    redis.call('DEL', hmin(num))
  end
end
for _, num in ipairs(live) do
  if budget <= 0 then break end
  sweep(num, now)
end
-- Parked holds (a node that shut down for a restart) expire on their own time.
for _, num in ipairs(parked) do
  if budget <= 0 then break end
  sweep(num, now)
  if redis.call('ZCARD', hmin(num)) == 0 then
    redis.call('SREM', PARKED, num)
  end
end

-- Bye that keeps: leave the registry, park the holds.
local done = 1
if mode == 'k' and me then
  redis.call('SADD', PARKED, me)
  redis.call('ZREM', N, me)
  redis.call('HDEL', NN, name)
  redis.call('HDEL', NID, me)
end
-- Bye: release this node's holds, a batch per call, then leave the registry.
if mode == 'b' and me then
  budget = batch
  if sweep(me, nil) then
    redis.call('DEL', hmin(me))
    redis.call('ZREM', N, me)
    redis.call('HDEL', NN, name)
    redis.call('HDEL', NID, me)
  else
    done = 0
  end
end

local c = redis.call('HMGET', C, 'sessions', 'guests', 'bots', 'members', 'hidden')
for k = 1, 5 do c[k] = tonumber(c[k]) or 0 end
local online = c[2] + c[4] + c[5]
local pk = redis.call('HMGET', PEAK, 'online', 'at')
local po, pat = tonumber(pk[1]), tonumber(pk[2])
if not po or online > po then
  po, pat = online, now
  redis.call('HSET', PEAK, 'online', po, 'at', pat)
end
return { tonumber(epoch), fresh, now, redis.call('ZCARD', N), c[1], c[2], c[3], c[4], c[5], po, pat, done }
