-- One call of a node's flush: registers the node, applies a bounded chunk of its operations,
-- sweeps a bounded amount of a dead or parked node's claims, refreshes key TTLs, and returns
-- the view. Every key starts with the prefix "{ns}:" taken from KEYS[1] ("{ns}:n"), so one
-- hash tag keeps them on one Redis Cluster slot.
--
-- Cost: the Redis a site gives us is shared with its caches and sessions, so a call is kept
-- short (the node sizes each chunk by a work budget) and cheap: a page change reads and writes
-- one session record; page counts, page members, user records and counters are aggregated
-- over the call and written once per page, user or counter at the end.
--
-- ARGV (header): 1 node name, 2 process token, 3 call sequence, 4 highest sequence this node
-- saw acknowledged, 5 node timeout ms, 6 flush interval ms, 7 mode ("f" flush, "b" bye: release
-- this node's claims, "k" bye that keeps: park them until their own expiry), 8 "1" when this
-- node has no refill left to send, 9 peak online and 10 peak at (ms) this node last saw,
-- 11 sweep budget (claims), 12 first session bucket and 13 number of buckets whose TTL to
-- refresh, 14 first page and 15 number of pages whose member list TTL to refresh, 16 key TTL ms.
-- Then one argument per operation, packed:
--   "u" id(16) kind(1: g b m h) renew(1: 0/1) ttl_ms(8 hex) seen_age_ms(8 hex)
--       active_age_ms(8 hex) user_len(4 hex) user sortkey_len(4 hex) sortkey page
--   "n" ...      the same, when only the claim's expiry is due: if the claim exists, only
--                its expiry (and its user's last seen) moves; else as "u"
--   "r" id(16)   release this node's claim
--   "l" id(16)   leave: end the session for every claimant
-- Nodes send ages and time left, never timestamps: Redis TIME scores everything.
--
-- Returns {status (1 ok, 2 node name in use by another live process, 3 an older call that
-- arrived late: ignored), fresh, registered at seq, now ms, live nodes, sessions, guests, bots,
-- members, hidden, peak online, peak at, stale, more sweep work, done (bye)[, next page of
-- the TTL cycle]}.
local P = string.sub(KEYS[1], 1, #KEYS[1] - 1)
local C, U, M, PG, PEAK = P .. 'c', P .. 'u', P .. 'm', P .. 'p', P .. 'peak'
local N, NN, ND, NSEQ = P .. 'n', P .. 'nn', P .. 'nd', P .. 'nseq'
local DEAD, PARKED, FILL, SINCE = P .. 'dead', P .. 'parked', P .. 'fill', P .. 'since'
local FIXED = { C, U, M, PG, N, NN, ND, NSEQ, DEAD, PARKED, FILL, SINCE }
local BUCKETS = 4096

-- Sessions live in 4096 buckets by id so that each bucket stays within Redis's compact
-- encoding (listpack) up to about 500k sessions.
local function bucket(id)
  return string.byte(id, 1) * 16 + math.floor(string.byte(id, 2) / 16)
end
local function skey(b) return P .. 's:' .. b end
-- A node's claims, by bucket, scored by their expiry; and the buckets it has claims in.
local function hkey(num, b) return P .. 'h:' .. num .. ':' .. b end
local function hbkey(num) return P .. 'hb:' .. num end
local function pmkey(page) return P .. 'pm:' .. page end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, token, seq, acked = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local timeout, flushms, mode, filled = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1'
local my_peak, my_peak_at, budget = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local ttl_b, ttl_bn, ttl_p, ttl_pn = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local keyttl = tonumber(ARGV[16])
local FIRST_OP = 17

local function view(status, fresh, reg, more, done)
  local c = redis.call('HMGET', C, 'sessions', 'guests', 'bots', 'members', 'hidden')
  for k = 1, 5 do c[k] = tonumber(c[k]) or 0 end
  local online = c[2] + c[4] + c[5]
  local pk = redis.call('HMGET', PEAK, 'online', 'at')
  local po, pat = tonumber(pk[1]), tonumber(pk[2])
  local stale = 0
  local since = tonumber(redis.call('GET', SINCE) or '0')
  if redis.call('SCARD', FILL) > 0 or redis.call('HLEN', DEAD) > 0 or now < since + flushms * 3 / 2 then
    stale = 1
  end
  -- The peak survives a lost Redis: nodes send back the last one they saw. A partial view
  -- (stale) never sets a new one.
  if my_peak > 0 and (not po or my_peak > po) then po, pat = my_peak, my_peak_at end
  if stale == 0 and (not po or online > po) then po, pat = online, now end
  if po and (tonumber(pk[1]) ~= po or tonumber(pk[2]) ~= pat) then
    redis.call('HSET', PEAK, 'online', po, 'at', pat)
  end
  if po then redis.call('PEXPIRE', PEAK, 30 * 86400000) end
  return { status, fresh, reg, now, redis.call('ZCARD', N), c[1], c[2], c[3], c[4], c[5],
    po or 0, pat or 0, stale, more, done }
end

-- Nodes silent past their own timeout are dead (the registry scores each node by the time
-- its timeout runs out): their claims are released below, in batches.
for _, num in ipairs(redis.call('ZRANGEBYSCORE', N, '-inf', '(' .. now)) do
  redis.call('ZREM', N, num)
  redis.call('HSET', DEAD, num, 0)
  redis.call('SREM', FILL, num)
  local v = redis.call('HGET', ND, num)
  redis.call('HDEL', ND, num)
  if v then
    local nm = cmsgpack.unpack(v)[1]
    if redis.call('HGET', NN, nm) == num then redis.call('HDEL', NN, nm) end
  end
end

-- This node. Its record: {name, token, last sequence applied, sequence it registered at}.
local me = redis.call('HGET', NN, name)
local fresh, lost, reg = 0, false, 0
if me then
  local rec = cmsgpack.unpack(redis.call('HGET', ND, me))
  if rec[2] ~= token then
    -- Another process runs under this name and is alive: touch nothing of it.
    return view(2, 0, 0, 0, 1)
  end
  if rec[3] < acked then
    -- Writes this node saw acknowledged are gone (Redis restored from an older dump): its
    -- claims here are outdated. Let them go as a dead node's and register anew.
    redis.call('ZREM', N, me)
    redis.call('HDEL', ND, me)
    redis.call('HDEL', NN, name)
    redis.call('SREM', FILL, me)
    redis.call('HSET', DEAD, me, 0)
    me, lost = nil, true
  elseif seq <= rec[3] then
    -- Sent before a call that already ran (it waited in a stalled server): ignore it.
    return view(3, 0, rec[4], 0, 1)
  else
    reg = rec[4]
  end
elseif acked > 0 then
  -- This node had flushed here before and is unknown now: Redis lost its data.
  lost = true
end
if not me then
  if mode == 'b' or mode == 'k' then return view(1, 0, 0, 0, 1) end
  me = tostring(redis.call('INCR', NSEQ))
  redis.call('HSET', NN, name, me)
  fresh, reg = 1, seq
  -- After a loss every node sends all it has again; until each has, the view is partial.
  if lost then
    redis.call('SADD', FILL, me)
    redis.call('SET', SINCE, now)
  end
end
redis.call('HSET', ND, me, cmsgpack.pack({ name, token, seq, reg }))
redis.call('ZADD', N, now + timeout, me)
-- A refill is complete once the node, having seen its registration, says it sent everything.
if filled and fresh == 0 and acked >= reg then redis.call('SREM', FILL, me) end

-- What this call changes, aggregated and written once at the end.
local dc = { sessions = 0, guests = 0, bots = 0 }
local dpage = {}         -- page -> change of its session count
local pm_del, pm_add = {}, {} -- page -> {member entries}
local users = {}         -- user -> {listed delta, hidden delta, sortkey, seen, active}
local new_keys = {}      -- keys created here: they get their TTL at once
local my_buckets = {}    -- buckets where this node took a new claim

local function user_touch(user, sortkey)
  local u = users[user]
  if not u then
    u = { 0, 0, sortkey, 0, 0 }
    users[user] = u
  elseif sortkey and not u[3] then
    u[3] = sortkey
  end
  return u
end

local function entry(sortkey, user, id)
  return sortkey .. '\0' .. user .. '\0' .. id
end

-- Adds (d = 1) or removes (d = -1) a session's share of the counts. `sortkey` is known for
-- an upsert; for a removal it comes from the user record at the end.
local function apply(id, s, d, sortkey)
  dc.sessions = dc.sessions + d
  local kind, user, page = s[1], s[2], s[3]
  if kind == 'g' then
    dc.guests = dc.guests + d
  elseif kind == 'b' then
    dc.bots = dc.bots + d
  else
    local u = user_touch(user, sortkey)
    if kind == 'm' then u[1] = u[1] + d else u[2] = u[2] + d end
  end
  if page ~= '' then
    dpage[page] = (dpage[page] or 0) + d
    if kind == 'm' then
      local list = d > 0 and pm_add or pm_del
      list[page] = list[page] or {}
      table.insert(list[page], { user, id, sortkey })
    end
  end
end

local function claims_without(s, num)
  local out, found = { s[1], s[2], s[3] }, false
  for k = 4, #s do
    if s[k] == num then found = true else out[#out + 1] = s[k] end
  end
  return out, found
end

local function session_end(S, id, s)
  redis.call('HDEL', S, id)
  apply(id, s, -1)
end

local function release(id, num)
  local b = bucket(id)
  if redis.call('ZREM', hkey(num, b), id) == 0 then return end
  local S = skey(b)
  local v = redis.call('HGET', S, id)
  if not v then return end
  local s, _ = claims_without(cmsgpack.unpack(v), num)
  if #s <= 3 then
    session_end(S, id, s)
  else
    redis.call('HSET', S, id, cmsgpack.pack(s))
  end
end

local function leave(id)
  local b = bucket(id)
  local S = skey(b)
  local v = redis.call('HGET', S, id)
  if not v then return end
  local s = cmsgpack.unpack(v)
  for k = 4, #s do redis.call('ZREM', hkey(s[k], b), id) end
  session_end(S, id, s)
end

local function upsert(id, kind, renew, ttl, seen, active, user, sortkey, page)
  local b = bucket(id)
  local S = skey(b)
  local v = redis.call('HGET', S, id)
  local s, claimant
  if v then
    s = cmsgpack.unpack(v)
    for k = 4, #s do if s[k] == me then claimant = true end end
  end
  if renew or not claimant then
    if redis.call('ZADD', hkey(me, b), now + ttl, id) == 1 then
      new_keys[hkey(me, b)] = true
      my_buckets[#my_buckets + 1] = b
    end
  end
  if not s then
    s = { kind, user, page, me }
    apply(id, s, 1, sortkey)
    redis.call('HSET', S, id, cmsgpack.pack(s))
    new_keys[S] = true
  else
    local changed = not claimant
    if not claimant then s[#s + 1] = me end
    -- A node that saw only touches knows no page: it does not erase another node's.
    if page == '' then page = s[3] end
    if s[1] ~= kind or s[2] ~= user then
      apply(id, s, -1)
      s[1], s[2], s[3] = kind, user, page
      apply(id, s, 1, sortkey)
      changed = true
    elseif s[3] ~= page then
      -- A page change, the common case: only the page's counts and member list move.
      local old = s[3]
      if old ~= '' then dpage[old] = (dpage[old] or 0) - 1 end
      dpage[page] = (dpage[page] or 0) + 1
      if kind == 'm' then
        if old ~= '' then
          pm_del[old] = pm_del[old] or {}
          table.insert(pm_del[old], { user, id, sortkey })
        end
        pm_add[page] = pm_add[page] or {}
        table.insert(pm_add[page], { user, id, sortkey })
      end
      s[3] = page
      changed = true
    end
    if changed then redis.call('HSET', S, id, cmsgpack.pack(s)) end
  end
  if user ~= '' and renew then
    local u = user_touch(user, sortkey)
    if seen > u[4] then u[4] = seen end
    if active > u[5] then u[5] = active end
  end
end

local function hex(a, i, n) return tonumber(string.sub(a, i, i + n - 1), 16) end

for i = FIRST_OP, #ARGV do
  local a = ARGV[i]
  local op, id = string.sub(a, 1, 1), string.sub(a, 2, 17)
  if op == 'n' and redis.call('ZADD', hkey(me, bucket(id)), 'XX', 'CH', now + hex(a, 20, 8), id) == 1 then
    -- A renewal of a claim that exists: its expiry moved; the last seen of its user too.
    local ulen = hex(a, 44, 4)
    if ulen > 0 then
      local u = user_touch(string.sub(a, 48, 47 + ulen), nil)
      local seen, active = now - hex(a, 28, 8), now - hex(a, 36, 8)
      if seen > u[4] then u[4] = seen end
      if active > u[5] then u[5] = active end
    end
  elseif op == 'u' or op == 'n' then
    local ulen = hex(a, 44, 4)
    local user = string.sub(a, 48, 47 + ulen)
    local klen = hex(a, 48 + ulen, 4)
    local sortkey = string.sub(a, 52 + ulen, 51 + ulen + klen)
    local page = string.sub(a, 52 + ulen + klen)
    upsert(id, string.sub(a, 18, 18), string.sub(a, 19, 19) == '1', hex(a, 20, 8),
      now - hex(a, 28, 8), now - hex(a, 36, 8), user, sortkey, page)
  elseif op == 'r' then
    release(id, me)
  elseif op == 'l' then
    leave(id)
  else
    return redis.error_reply('presence flush: unknown operation ' .. tostring(op))
  end
end

-- What the operations and sweeps changed, written once per user, page and counter.
local function write_changes()
  -- Users: each once. Transitions between listed, hidden and gone move the counters and the
  -- name-ordered list of listed users.
  local dmembers, dhidden = 0, 0
  local user_rec = {}
  for user, u in pairs(users) do
    local v = redis.call('HGET', U, user)
    local rec = v and cmsgpack.unpack(v) or { 0, 0, u[3] or string.lower(user), 0, 0 }
    user_rec[user] = rec
  end
  -- Page members first: a removal needs the sort key the entry was added with.
  for page, list in pairs(pm_del) do
    local entries = {}
    for _, e in ipairs(list) do
      local rec = user_rec[e[1]]
      entries[#entries + 1] = entry(e[3] or (rec and rec[3]) or string.lower(e[1]), e[1], e[2])
    end
    redis.call('ZREM', pmkey(page), unpack(entries))
  end
  for page, list in pairs(pm_add) do
    local args = {}
    for _, e in ipairs(list) do
      args[#args + 1] = 0
      args[#args + 1] = entry(e[3], e[1], e[2])
    end
    redis.call('ZADD', pmkey(page), unpack(args))
    redis.call('PEXPIRE', pmkey(page), keyttl)
  end
  for user, u in pairs(users) do
    local rec = user_rec[user]
    local was_listed, was_hidden = rec[1] > 0, rec[1] == 0 and rec[2] > 0
    rec[1] = math.max(0, rec[1] + u[1])
    rec[2] = math.max(0, rec[2] + u[2])
    if u[4] > rec[4] then rec[4] = u[4] end
    if u[5] > rec[5] then rec[5] = u[5] end
    local listed, hidden = rec[1] > 0, rec[1] == 0 and rec[2] > 0
    if was_listed ~= listed then
      if listed then
        dmembers = dmembers + 1
        redis.call('ZADD', M, 0, rec[3] .. '\0' .. user)
      else
        dmembers = dmembers - 1
        redis.call('ZREM', M, rec[3] .. '\0' .. user)
      end
    end
    if was_hidden ~= hidden then dhidden = dhidden + (hidden and 1 or -1) end
    if rec[1] == 0 and rec[2] == 0 then
      redis.call('HDEL', U, user)
    elseif u[1] ~= 0 or u[2] ~= 0 or u[4] > 0 or u[5] > 0 then
      redis.call('HSET', U, user, cmsgpack.pack(rec))
    end
  end
  for page, d in pairs(dpage) do
    if d ~= 0 then
      if tonumber(redis.call('ZINCRBY', PG, d, page)) <= 0 then redis.call('ZREM', PG, page) end
    end
  end
  dc.members, dc.hidden = dmembers, dhidden
  for field, d in pairs(dc) do
    if d ~= 0 then redis.call('HINCRBY', C, field, d) end
  end
  if #my_buckets > 0 then
    local args = {}
    for _, b in ipairs(my_buckets) do
      args[#args + 1] = b
      args[#args + 1] = b
    end
    redis.call('ZADD', hbkey(me), unpack(args))
    new_keys[hbkey(me)] = true
  end
  for key, _ in pairs(new_keys) do redis.call('PEXPIRE', key, keyttl) end

end

-- Sweeps, within the budget: dead nodes' claims all go; parked nodes' claims go at their own
-- expiry; a bye releases this node's own.
local function sweep(num, upto, cursor)
  -- Releases `num`'s claims due by `upto` (all when nil), bucket by bucket from `cursor`,
  -- within the budget; returns the cursor to go on from, or nil once every bucket was seen.
  local hb = hbkey(num)
  while budget > 0 do
    local bs = redis.call('ZRANGEBYSCORE', hb, cursor, '+inf', 'LIMIT', 0, 8)
    if #bs == 0 then return nil end
    for _, b in ipairs(bs) do
      local h, want = hkey(num, b), budget
      local ids
      if upto then
        ids = redis.call('ZRANGEBYSCORE', h, '-inf', upto, 'LIMIT', 0, want)
      else
        ids = redis.call('ZRANGE', h, 0, want - 1)
      end
      for _, id in ipairs(ids) do release(id, num) end
      budget = budget - #ids - 1
      if redis.call('EXISTS', h) == 0 then
        redis.call('ZREM', hb, b)
      elseif #ids >= want then
        return tonumber(b) -- the budget ran out inside this bucket
      end
      cursor = tonumber(b) + 1
      if budget <= 0 then return cursor end
    end
  end
  return cursor
end

local more = 0
local dead = redis.call('HGETALL', DEAD)
for k = 1, #dead, 2 do
  if budget <= 0 then more = 1 break end
  local num = dead[k]
  local next_cursor = sweep(num, nil, tonumber(dead[k + 1]))
  if next_cursor then
    redis.call('HSET', DEAD, num, next_cursor)
    more = 1
  else
    redis.call('HDEL', DEAD, num)
    redis.call('DEL', hbkey(num))
  end
end
-- A parked node's claims are looked at in turn, a few buckets per call.
local parked = redis.call('HGETALL', PARKED)
local spare = budget - 64
if spare > 0 then budget = 64 end
for k = 1, #parked, 2 do
  if budget <= 0 then break end
  local num = parked[k]
  local next_cursor = sweep(num, now, tonumber(parked[k + 1]))
  if redis.call('EXISTS', hbkey(num)) == 0 then
    redis.call('HDEL', PARKED, num)
  else
    redis.call('HSET', PARKED, num, next_cursor or 0)
  end
end
if spare > 0 then budget = budget + spare end

local done = 1
if mode == 'k' then
  -- Bye that keeps: leave the registry, park the claims.
  redis.call('HSET', PARKED, me, 0)
  redis.call('ZREM', N, me)
  redis.call('HDEL', NN, name)
  redis.call('HDEL', ND, me)
  redis.call('SREM', FILL, me)
elseif mode == 'b' then
  -- Bye: release this node's claims, a batch per call, then leave the registry.
  if budget > 0 and not sweep(me, nil, 0) then
    redis.call('DEL', hbkey(me))
    redis.call('ZREM', N, me)
    redis.call('HDEL', NN, name)
    redis.call('HDEL', ND, me)
    redis.call('SREM', FILL, me)
  else
    done = 0
  end
end

write_changes()

-- TTLs: the fixed keys each call; session buckets, this node's claim buckets and the pages'
-- member lists a slice at a time, so all are refreshed well within the TTL.
if ttl_bn > 0 then
  for _, key in ipairs(FIXED) do redis.call('PEXPIRE', key, keyttl) end
  redis.call('PEXPIRE', hbkey(me), keyttl)
  for b = ttl_b, math.min(ttl_b + ttl_bn, BUCKETS) - 1 do
    redis.call('PEXPIRE', skey(b), keyttl)
    redis.call('PEXPIRE', hkey(me, b), keyttl)
  end
end
local next_page = -1
if ttl_pn > 0 then
  local pages = redis.call('ZRANGE', PG, ttl_p, ttl_p + ttl_pn - 1)
  for _, page in ipairs(pages) do
    redis.call('PEXPIRE', pmkey(page), keyttl)
  end
  next_page = #pages < ttl_pn and 0 or ttl_p + ttl_pn
end

local r = view(1, fresh, reg, more, done)
r[#r + 1] = next_page
return r
