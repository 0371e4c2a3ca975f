-- One call of a node's flush: registers the node, applies a bounded chunk of its operations,
-- sweeps a bounded amount of a dead or parked node's claims, refreshes key TTLs, and returns
-- the view. Every key starts with the prefix "{ns}:" taken from KEYS[1] ("{ns}:n"), so one
-- hash tag keeps them on one Redis Cluster slot.
--
-- Cost: the Redis a site gives us is shared with its caches and sessions, so a call is kept
-- short (the node sizes each chunk by a work budget) and cheap. A session's page is counted
-- by one node, its page owner (the record's third field): the owner keeps the counts of its
-- pages and its listed sessions' page entries itself and sends them as absolute values
-- ("P", "A", "D" below), so a page change costs no per-session command at all. A node that
-- starts counting a session another node counted ("take") leaves a message in that node's
-- inbox, which drops it at its next flush. User records and counters are aggregated over
-- the call and written once per user or counter at the end.
--
-- ARGV (header): 1 node name, 2 process token, 3 call sequence, 4 highest sequence this node
-- saw acknowledged, 5 node timeout ms, 6 flush interval ms, 7 mode ("f" flush, "b" bye: release
-- this node's claims, "k" bye that keeps: park them until their own expiry), 8 "1" when this
-- node has no refill left to send, 9 peak online and 10 peak at (ms) this node last saw,
-- 11 sweep budget (claims), 12 first session bucket and 13 number of buckets whose TTL to
-- refresh, 14 first and 15 number of this node's page-member buckets whose TTL to refresh,
-- 16 key TTL ms, 17 the highest inbox message this node has taken in (its score), 18 the
-- number of session buckets (4096 with one hash tag, fewer per tag when the namespace is
-- spread over several: a bucket then holds as many sessions), 19 the number of member
-- buckets of this node's page entries (256 with one tag, fewer per tag with several), 20 "1"
-- to refresh the TTLs of the namespace's fixed keys and of this node's own.
--
-- TTLs: a key this call creates gets its TTL at once (`made` below, judged from what the
-- write returns, so a call that creates nothing sets none); the node asks for the rest a
-- slice at a time (ARGV 12 to 15, 20), each key at least every quarter of the key TTL.
-- Then one argument per operation, packed:
--   "u" id(16) kind(1: g b m h) renew(1: 0/1) ttl_ms(8 hex) seen_age_ms(8 hex)
--       active_age_ms(8 hex) user_len(4 hex) user sortkey_len(4 hex) sortkey take(1: 0/1)
--                take: this node now counts the session's page
--   "n" ...      the same, when only the claim's expiry is due: if the claim exists, only
--                its expiry (and its user's last seen) moves; else as "u"
--   "r" id(16)   release this node's claim
--   "l" id(16)   leave: end the session for every claimant
--   "x" id(16)   moved to another hash tag (signed in or out): counted no more here, for
--                any claimant; the others keep their claims on a mark (kind "x") until
--                they let it go, so that renewing what they had counts nothing here
--   "P" count(8 hex) page          this node's sessions on the page, as it counts them now
--   "A" bucket(4 hex) {len(4 hex) entry}...   page entries this node adds to a bucket of its
--   "D" bucket(4 hex) {len(4 hex) entry}...   member lists, or removes; an entry is
--       page_len(4 hex) page sortkey \0 user \0 id(16), one per listed session on the page
--   "K" {id(16) len(4 hex) bucket(4 hex) page_len(4 hex) page entry}...   before a bye that
--       parks: where this node counts its sessions, so that each leaves its page when it
--       expires or another node takes it
-- The node sends "u", "n", "r", "l" and "x" sorted by session bucket: each bucket's run reads and
-- writes its records and claims once. Nodes send ages and time left, never timestamps:
-- Redis TIME scores everything.
--
-- Returns {status (1 ok, 2 node name in use by another live process, 3 an older call that
-- arrived late: ignored), fresh, registered at seq, now ms, live nodes, sessions, guests, bots,
-- members, hidden, peak online, peak at, stale, more sweep work, done (bye), the inbox stamp
-- now, the call's time in Redis (µs),
-- then this node's inbox messages:
-- kind(1: "m" another node took the session's page, "o" its page owner let it go) id(16),
-- stamp, ...}.
local P = string.sub(KEYS[1], 1, #KEYS[1] - 1)
local C, U, M, PG, PEAK = P .. 'c', P .. 'u', P .. 'm', P .. 'p', P .. 'peak'
local N, NN, ND, NSEQ = P .. 'n', P .. 'nn', P .. 'nd', P .. 'nseq'
local DEAD, PARKED, FILL, SINCE = P .. 'dead', P .. 'parked', P .. 'fill', P .. 'since'
local DRAIN, IBN = P .. 'drain', P .. 'ibn'
local FIXED = { C, U, M, PG, N, NN, ND, NSEQ, DEAD, PARKED, FILL, SINCE, DRAIN, IBN }
local BUCKETS = tonumber(ARGV[18])
-- A node's page entries are spread over this many member buckets by a hash of the page
-- (computed by the node), so that each stays small and compact.
local PM_BUCKETS = tonumber(ARGV[19])

-- Sessions live in buckets by id (4096 in a namespace of one tag) so that each bucket stays
-- within Redis's compact encoding (listpack) up to about 500k sessions per tag.
local function bucket(id)
  return (string.byte(id, 1) * 16 + math.floor(string.byte(id, 2) / 16)) % BUCKETS
end
local function skey(b) return P .. 's:' .. b end
-- A node's claims, by bucket, scored by their expiry; and the buckets it has claims in.
local function hkey(num, b) return P .. 'h:' .. num .. ':' .. b end
local function hbkey(num) return P .. 'hb:' .. num end
-- A node's page counts, its page entries by member bucket, its inbox.
local function pckey(num) return P .. 'pc:' .. num end
local function pmkey(num, b) return P .. 'pm:' .. num .. ':' .. b end
local function ibkey(num) return P .. 'ib:' .. num end
-- A parked node's pages of its sessions: id -> bucket(4 hex) page_len(4 hex) page entry.
local function ppkey(num) return P .. 'pp:' .. num end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, token, seq, acked = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local timeout, flushms, mode, filled = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1'
local my_peak, my_peak_at, budget = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local ttl_b, ttl_bn, ttl_p, ttl_pn = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local keyttl, inbox_seen = tonumber(ARGV[16]), tonumber(ARGV[17])
local fixed_ttl = ARGV[20] == '1'
local FIRST_OP = 21

-- Keys this call may have created: they get their TTL before it returns.
local new_keys = {}
local function made(key) new_keys[key] = true end

local function view(status, fresh, reg, more, done)
  for key, _ in pairs(new_keys) do redis.call('PEXPIRE', key, keyttl) end
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
    redis.call('PEXPIRE', PEAK, 30 * 86400000)
  elseif po and fixed_ttl then
    redis.call('PEXPIRE', PEAK, 30 * 86400000)
  end
  return { status, fresh, reg, now, redis.call('ZCARD', N), c[1], c[2], c[3], c[4], c[5],
    po or 0, pat or 0, stale, more, done, tonumber(redis.call('GET', IBN) or '0'), 0 }
end

-- A node leaves the registry: its claims are released below, in batches, and what it
-- counted on pages is taken off the page counts.
local function unregister(num, drain_pages)
  redis.call('ZREM', N, num)
  redis.call('SREM', FILL, num)
  if drain_pages then
    redis.call('HSET', DRAIN, num, 0)
    made(DRAIN)
  end
  local v = redis.call('HGET', ND, num)
  redis.call('HDEL', ND, num)
  if v then
    local nm = cmsgpack.unpack(v)[1]
    if redis.call('HGET', NN, nm) == num then redis.call('HDEL', NN, nm) end
  end
end

-- Nodes silent past their own timeout are dead (the registry scores each node by the time
-- its timeout runs out).
for _, num in ipairs(redis.call('ZRANGEBYSCORE', N, '-inf', '(' .. now)) do
  unregister(num, true)
  redis.call('HSET', DEAD, num, 0)
  made(DEAD)
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
    unregister(me, true)
    redis.call('HSET', DEAD, me, 0)
    made(DEAD)
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
  made(NSEQ)
  made(NN)
  fresh, reg = 1, seq
  -- After a loss every node sends all it has again; until each has, the view is partial.
  if lost then
    redis.call('SADD', FILL, me)
    redis.call('SET', SINCE, now)
    made(FILL)
    made(SINCE)
  end
end
if redis.call('HSET', ND, me, cmsgpack.pack({ name, token, seq, reg })) > 0 then made(ND) end
if redis.call('ZADD', N, now + timeout, me) > 0 then made(N) end
-- A refill is complete once the node, having seen its registration, says it sent everything.
if filled and fresh == 0 and acked >= reg then redis.call('SREM', FILL, me) end
-- A bye takes this node's pages off the page counts first (in the drain below).
if mode == 'b' and redis.call('HSETNX', DRAIN, me, 0) > 0 then made(DRAIN) end
-- Inbox messages the node has taken in.
if fresh == 0 and inbox_seen > 0 then
  redis.call('ZREMRANGEBYSCORE', ibkey(me), '-inf', inbox_seen)
end

-- What this call changes, aggregated and written once at the end.
local dc = { sessions = 0, guests = 0, bots = 0 }
local users = {}         -- user -> {listed delta, hidden delta, sortkey, seen, active}
local my_buckets = {}    -- buckets where this node took a new claim

-- A parked node no longer counts session `id` on its page: another node took it, or it
-- ended. The node left the page it had there at its bye.
local function parked_drop(num, id)
  local v = redis.call('HGET', ppkey(num), id)
  if not v then return end
  redis.call('HDEL', ppkey(num), id)
  local b, plen = tonumber(string.sub(v, 1, 4), 16), tonumber(string.sub(v, 5, 8), 16)
  local page, entry = string.sub(v, 9, 8 + plen), string.sub(v, 9 + plen)
  if tonumber(redis.call('ZINCRBY', pckey(num), -1, page)) <= 0 then redis.call('ZREM', pckey(num), page) end
  if tonumber(redis.call('ZINCRBY', PG, -1, page)) <= 0 then redis.call('ZREM', PG, page) end
  if #entry > 0 then redis.call('ZREM', pmkey(num, b), entry) end
end

-- Tells node `num` (if live) about session `id`: "m" another node counts its page now, "o"
-- its page owner let it go (take it if you still have it). A parked node is dealt with
-- here and now. This node may be told too (a sweep it runs lets go of a session it holds).
local function message(num, kind, id)
  if not redis.call('ZSCORE', N, num) then
    if kind == 'm' and redis.call('HEXISTS', PARKED, num) == 1 then parked_drop(num, id) end
    return
  end
  -- Each message its own stamp: a node takes its inbox in by stamp, a page at a time.
  local stamp = redis.call('INCR', IBN)
  if stamp == 1 then made(IBN) end
  redis.call('ZADD', ibkey(num), stamp, kind .. id)
  made(ibkey(num))
end

local function hex(a, i, n) return tonumber(string.sub(a, i, i + n - 1), 16) end

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

-- A renewal's news for its user: last seen and last active (ages in op `a`), the latest wins.
local function user_seen(user, sortkey, a)
  local u = user_touch(user, sortkey)
  local seen, active = now - hex(a, 28, 8), now - hex(a, 36, 8)
  if seen > u[4] then u[4] = seen end
  if active > u[5] then u[5] = active end
end

-- Adds (d = 1) or removes (d = -1) a session's share of the counters and its user's.
-- `sortkey` is known for an upsert; for a removal it comes from the user record at the end.
local function apply(s, d, sortkey)
  local kind, user = s[1], s[2]
  if kind == 'x' then return end -- moved to another tag: counted there
  dc.sessions = dc.sessions + d
  if kind == 'g' then
    dc.guests = dc.guests + d
  elseif kind == 'b' then
    dc.bots = dc.bots + d
  else
    local u = user_touch(user, sortkey)
    if kind == 'm' then u[1] = u[1] + d else u[2] = u[2] + d end
  end
end

-- Takes `num`'s claim off a record; when `num` counted its page, the other claimants are
-- told that nobody does now.
local function without(s, num, id, parked)
  local out, found = { s[1], s[2], s[3] }, false
  for k = 4, #s do
    if s[k] == num then found = true else out[#out + 1] = s[k] end
  end
  if out[3] == num then
    out[3] = ''
    if parked then parked_drop(num, id) end
    for k = 4, #out do message(out[k], 'o', id) end
  end
  return out, found
end

-- Releases `num`'s claims on `ids`, all in bucket `b`: a session no claim holds any more
-- ends. One read and one write of the bucket, one of the claims, whatever their number.
local function release_many(num, b, ids, parked)
  if #ids == 0 then return end
  local S = skey(b)
  local recs = redis.call('HMGET', S, unpack(ids))
  local sets, dels = {}, {}
  for k, id in ipairs(ids) do
    local v = recs[k]
    if v then
      local s, found = without(cmsgpack.unpack(v), num, id, parked)
      if found then
        if #s <= 3 then
          dels[#dels + 1] = id
          apply(s, -1)
        else
          sets[#sets + 1] = id
          sets[#sets + 1] = cmsgpack.pack(s)
        end
      end
    end
  end
  if #dels > 0 then redis.call('HDEL', S, unpack(dels)) end
  if #sets > 0 then redis.call('HSET', S, unpack(sets)) end
  redis.call('ZREM', hkey(num, b), unpack(ids))
end

-- The session operations of one bucket (the node sends them sorted by bucket): renewals
-- whose claim exists move only its expiry; the others read the bucket's records once and
-- write them back once.
local function run_bucket(b, ops)
  local S, H = skey(b), hkey(me, b)
  local claims = {} -- ZADD arguments for this node's claims in the bucket
  local rest = {}
  local n_ids, n_ops = {}, {}
  for _, a in ipairs(ops) do
    if string.sub(a, 1, 1) == 'n' then
      n_ids[#n_ids + 1] = string.sub(a, 2, 17)
      n_ops[#n_ops + 1] = a
    else
      rest[#rest + 1] = a
    end
  end
  if #n_ids > 0 then
    local scores = redis.call('ZMSCORE', H, unpack(n_ids))
    for k, a in ipairs(n_ops) do
      if scores[k] then
        -- A renewal of a claim that exists: its expiry moves; its user's last seen too.
        claims[#claims + 1] = now + hex(a, 20, 8)
        claims[#claims + 1] = n_ids[k]
        local ulen = hex(a, 44, 4)
        if ulen > 0 then user_seen(string.sub(a, 48, 47 + ulen), nil, a) end
      else
        rest[#rest + 1] = a -- the claim is gone: as an upsert
      end
    end
  end
  if #rest > 0 then
    local ids = {}
    for k, a in ipairs(rest) do ids[k] = string.sub(a, 2, 17) end
    local recs = redis.call('HMGET', S, unpack(ids))
    local sets, dels, mine = {}, {}, {}
    for k, a in ipairs(rest) do
      local op, id, v = string.sub(a, 1, 1), ids[k], recs[k]
      if op == 'u' or op == 'n' then
        local ulen = hex(a, 44, 4)
        local user = string.sub(a, 48, 47 + ulen)
        local klen = hex(a, 48 + ulen, 4)
        local sortkey = string.sub(a, 52 + ulen, 51 + ulen + klen)
        local take = string.sub(a, 52 + ulen + klen, 52 + ulen + klen) == '1'
        local kind, renew = string.sub(a, 18, 18), string.sub(a, 19, 19) == '1'
        local s, claimant
        if v then
          s = cmsgpack.unpack(v)
          for j = 4, #s do if s[j] == me then claimant = true end end
        end
        if renew or not claimant then
          claims[#claims + 1] = now + hex(a, 20, 8)
          claims[#claims + 1] = id
        end
        local changed = false
        if not s then
          s = { kind, user, take and me or '', me }
          apply(s, 1, sortkey)
          changed = true
        elseif s[1] == 'x' and op == 'n' then
          -- Moved to another tag, and this node only renews what it had: it keeps its
          -- claim on the mark and counts nothing.
          if not claimant then
            s[#s + 1] = me
            changed = true
          end
        else
          if not claimant then
            s[#s + 1] = me
            changed = true
          end
          if s[1] ~= kind or s[2] ~= user then
            apply(s, -1)
            s[1], s[2] = kind, user
            apply(s, 1, sortkey)
            changed = true
          end
          if take and s[3] ~= me then
            if s[3] ~= '' then message(s[3], 'm', id) end
            s[3] = me
            changed = true
          end
        end
        if changed then
          sets[#sets + 1] = id
          sets[#sets + 1] = cmsgpack.pack(s)
        end
        if user ~= '' and renew then user_seen(user, sortkey, a) end
      elseif op == 'r' then
        mine[#mine + 1] = id
      elseif op == 'l' then
        -- Leave: the session ends for every claimant.
        if v then
          local s = cmsgpack.unpack(v)
          for j = 4, #s do redis.call('ZREM', hkey(s[j], b), id) end
          if s[3] ~= '' then message(s[3], 'm', id) end
          dels[#dels + 1] = id
          apply(s, -1)
        end
      elseif op == 'x' then
        -- Moved to another tag (signed in or out): no longer counted here, for any node.
        -- The other claimants keep their claims on a mark (kind "x"), so that renewing what
        -- they had does not count it here again; it goes with the last of them.
        if v then
          local s = cmsgpack.unpack(v)
          if s[3] ~= '' then message(s[3], 'm', id) end
          apply(s, -1)
          local out = { 'x', '', '' }
          for j = 4, #s do
            if s[j] ~= me then out[#out + 1] = s[j] end
          end
          if #out > 3 then
            sets[#sets + 1] = id
            sets[#sets + 1] = cmsgpack.pack(out)
          else
            dels[#dels + 1] = id
          end
          redis.call('ZREM', H, id)
        end
      else
        error('presence flush: unknown operation ' .. tostring(op))
      end
    end
    if #dels > 0 then redis.call('HDEL', S, unpack(dels)) end
    if #sets > 0 then
      redis.call('HSET', S, unpack(sets))
      made(S)
    end
    release_many(me, b, mine, false)
  end
  if #claims > 0 and redis.call('ZADD', H, unpack(claims)) > 0 then
    made(H)
    my_buckets[#my_buckets + 1] = b
  end
end

-- This node's count of a page, as it counts it now; the cluster's count moves by the
-- difference, so that sending it twice does no harm.
local function page_count(page, n)
  local pc = pckey(me)
  local old = tonumber(redis.call('ZSCORE', pc, page) or '0')
  if n == old then return end
  if n > 0 then
    redis.call('ZADD', pc, n, page)
  else
    redis.call('ZREM', pc, page)
  end
  local now_n = tonumber(redis.call('ZINCRBY', PG, n - old, page))
  if now_n <= 0 then
    redis.call('ZREM', PG, page)
  elseif now_n == n - old then
    made(PG) -- the page was new: so may the key be
  end
end

-- Page entries, length-prefixed, from position `i` of `a`.
local function entries(a, i, zadd)
  local out = {}
  while i <= #a do
    local len = hex(a, i, 4)
    if zadd then out[#out + 1] = 0 end
    out[#out + 1] = string.sub(a, i + 4, i + 3 + len)
    i = i + 4 + len
  end
  return out
end

local pages_touched = false
local group, group_b = {}, nil
for i = FIRST_OP, #ARGV do
  local a = ARGV[i]
  local op = string.sub(a, 1, 1)
  if op == 'P' then
    page_count(string.sub(a, 10), hex(a, 2, 8))
    pages_touched = true
  elseif op == 'A' then
    local key = pmkey(me, hex(a, 2, 4))
    redis.call('ZADD', key, unpack(entries(a, 6, true)))
    made(key)
  elseif op == 'D' then
    redis.call('ZREM', pmkey(me, hex(a, 2, 4)), unpack(entries(a, 6, false)))
  elseif op == 'K' then
    -- Before a bye that parks: the pages of this node's sessions, {id(16) len(4 hex) value}.
    local args, j = {}, 2
    while j <= #a do
      local len = hex(a, j + 16, 4)
      args[#args + 1] = string.sub(a, j, j + 15)
      args[#args + 1] = string.sub(a, j + 20, j + 19 + len)
      j = j + 20 + len
    end
    redis.call('HSET', ppkey(me), unpack(args))
    redis.call('PEXPIRE', ppkey(me), keyttl)
  elseif op == 'u' or op == 'n' or op == 'r' or op == 'l' or op == 'x' then
    local b = bucket(string.sub(a, 2, 17))
    if b ~= group_b then
      if #group > 0 then run_bucket(group_b, group) end
      group, group_b = {}, b
    end
    group[#group + 1] = a
  else
    return redis.error_reply('presence flush: unknown operation ' .. tostring(op))
  end
end
if #group > 0 then run_bucket(group_b, group) end
if pages_touched then made(pckey(me)) end

-- What the operations and sweeps changed, written once per user and counter: one read of
-- the users' records, one write, one of the listed users.
local function write_changes()
  -- Transitions between listed, hidden and gone move the counters and the name-ordered
  -- list of listed users.
  local dmembers, dhidden = 0, 0
  local names = {}
  for user, _ in pairs(users) do names[#names + 1] = user end
  if #names > 0 then
    local recs = redis.call('HMGET', U, unpack(names))
    local sets, dels, m_add, m_rem = {}, {}, {}, {}
    for k, user in ipairs(names) do
      local u, v = users[user], recs[k]
      local rec = v and cmsgpack.unpack(v) or { 0, 0, u[3] or string.lower(user), 0, 0 }
      local was_listed, was_hidden = rec[1] > 0, rec[1] == 0 and rec[2] > 0
      rec[1] = math.max(0, rec[1] + u[1])
      rec[2] = math.max(0, rec[2] + u[2])
      if u[4] > rec[4] then rec[4] = u[4] end
      if u[5] > rec[5] then rec[5] = u[5] end
      local listed, hidden = rec[1] > 0, rec[1] == 0 and rec[2] > 0
      if was_listed ~= listed then
        if listed then
          dmembers = dmembers + 1
          m_add[#m_add + 1] = 0
          m_add[#m_add + 1] = rec[3] .. '\0' .. user
        else
          dmembers = dmembers - 1
          m_rem[#m_rem + 1] = rec[3] .. '\0' .. user
        end
      end
      if was_hidden ~= hidden then dhidden = dhidden + (hidden and 1 or -1) end
      if rec[1] == 0 and rec[2] == 0 then
        if v then dels[#dels + 1] = user end
      elseif u[1] ~= 0 or u[2] ~= 0 or u[4] > 0 or u[5] > 0 then
        sets[#sets + 1] = user
        sets[#sets + 1] = cmsgpack.pack(rec)
      end
    end
    if #m_rem > 0 then redis.call('ZREM', M, unpack(m_rem)) end
    if #m_add > 0 then
      redis.call('ZADD', M, unpack(m_add))
      made(M)
    end
    if #dels > 0 then redis.call('HDEL', U, unpack(dels)) end
    if #sets > 0 and redis.call('HSET', U, unpack(sets)) > 0 then made(U) end
  end
  dc.members, dc.hidden = dmembers, dhidden
  for field, d in pairs(dc) do
    if d ~= 0 and redis.call('HINCRBY', C, field, d) == d then made(C) end
  end
  if #my_buckets > 0 then
    local args = {}
    for _, b in ipairs(my_buckets) do
      args[#args + 1] = b
      args[#args + 1] = b
    end
    redis.call('ZADD', hbkey(me), unpack(args))
    made(hbkey(me))
  end
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
      release_many(num, b, ids, upto ~= nil)
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

-- What a node that left counted on pages comes off the page counts, a batch at a time; then
-- its page entries, by member bucket from `cursor`, and its inbox go. Returns the cursor
-- to go on from, or nil when done.
local function drain(num, cursor)
  local pc = pckey(num)
  if cursor == 0 then
    local list = redis.call('ZRANGE', pc, 0, budget - 1, 'WITHSCORES')
    for k = 1, #list, 2 do
      local page = list[k]
      if tonumber(redis.call('ZINCRBY', PG, -tonumber(list[k + 1]), page)) <= 0 then
        redis.call('ZREM', PG, page)
      end
    end
    budget = budget - #list / 2 - 1
    if #list > 0 then redis.call('ZREMRANGEBYRANK', pc, 0, #list / 2 - 1) end
    if redis.call('EXISTS', pc) == 1 then return 0 end
    cursor = 1
  end
  while cursor <= PM_BUCKETS and budget > 0 do
    redis.call('DEL', pmkey(num, cursor - 1))
    cursor = cursor + 1
    budget = budget - 1
  end
  if cursor <= PM_BUCKETS then return cursor end
  redis.call('DEL', ibkey(num), ppkey(num))
  return nil
end

local more = 0
local drains = redis.call('HGETALL', DRAIN)
for k = 1, #drains, 2 do
  if budget <= 0 then more = 1 break end
  local num = drains[k]
  local next_cursor = drain(num, tonumber(drains[k + 1]))
  if next_cursor then
    redis.call('HSET', DRAIN, num, next_cursor)
    more = 1
  else
    redis.call('HDEL', DRAIN, num)
  end
end
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
    redis.call('HSET', DRAIN, num, 0)
    made(DRAIN)
  else
    redis.call('HSET', PARKED, num, next_cursor or 0)
  end
end
if spare > 0 then budget = budget + spare end

local done = 1
if mode == 'k' then
  -- Bye that keeps: leave the registry, park the claims. The parked sessions stay in the
  -- view, pages too, until their own expiry or until a node takes them (the same node,
  -- restarted, does).
  redis.call('HSET', PARKED, me, 0)
  made(PARKED)
  unregister(me, false)
elseif mode == 'b' then
  -- Bye: its pages come off (above), its claims are released, a batch per call; then it
  -- leaves the registry.
  if budget > 0 and redis.call('HEXISTS', DRAIN, me) == 0 and not sweep(me, nil, 0) then
    redis.call('DEL', hbkey(me))
    unregister(me, false)
  else
    done = 0
  end
end

write_changes()

-- TTLs, a slice at a time as the node asks (every key well within the TTL): the fixed keys
-- and this node's own, session buckets with this node's claims there, its member buckets.
if fixed_ttl then
  for _, key in ipairs(FIXED) do redis.call('PEXPIRE', key, keyttl) end
  redis.call('PEXPIRE', hbkey(me), keyttl)
  redis.call('PEXPIRE', pckey(me), keyttl)
  redis.call('PEXPIRE', ibkey(me), keyttl)
end
-- A slice runs on past the last bucket to the first ones: the cycle never skips a bucket.
for j = 0, math.min(ttl_bn, BUCKETS) - 1 do
  local b = (ttl_b + j) % BUCKETS
  redis.call('PEXPIRE', skey(b), keyttl)
  redis.call('PEXPIRE', hkey(me, b), keyttl)
end
for j = 0, math.min(ttl_pn, PM_BUCKETS) - 1 do
  redis.call('PEXPIRE', pmkey(me, (ttl_p + j) % PM_BUCKETS), keyttl)
end

local r = view(1, fresh, reg, more, done)
-- The time this call took in Redis (µs): what the node sizes its calls by.
local t2 = redis.call('TIME')
r[17] = (tonumber(t2[1]) - tonumber(t[1])) * 1000000 + tonumber(t2[2]) - tonumber(t[2])
-- The inbox: what other nodes said since this node last took it in.
if mode == 'f' then
  local list = redis.call('ZRANGE', ibkey(me), 0, 1023, 'WITHSCORES')
  for k = 1, #list do r[#r + 1] = list[k] end
end
return r
