-- Reads of the cluster view that need more than one command. Read-only.
-- KEYS[1] = "{ns}:epoch" (routes the call to the tag's slot); ARGV[1] = what to read.
local P = string.sub(KEYS[1], 1, #KEYS[1] - 5)
local U, M, PG = P .. 'u', P .. 'm', P .. 'p'
local what = ARGV[1]

local function name_of(member)
  local z = string.find(member, '\0', 1, true)
  return string.sub(member, z + 1)
end

local function listed(user)
  local v = redis.call('HGET', U, user)
  return v and cmsgpack.unpack(v)[1] > 0
end

if what == 'user' then
  -- {listed sessions, hidden sessions, last seen ms, last active ms, now ms} or {}
  local v = redis.call('HGET', U, ARGV[2])
  if not v then return {} end
  local rec = cmsgpack.unpack(v)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return { rec[1], rec[2], rec[4], rec[5], now }
elseif what == 'page_count' then
  return tonumber(redis.call('ZSCORE', PG, ARGV[2]) or 0)
elseif what == 'page_counts' then
  -- the session counts of ARGV[2..]
  local out = {}
  for k = 2, #ARGV do
    out[#out + 1] = tonumber(redis.call('ZSCORE', PG, ARGV[k]) or 0)
  end
  return out
elseif what == 'session' then
  -- a session by id (16 bytes): {kind, user, page}, or {} when no node holds it
  local id = ARGV[2]
  local b = string.byte(id, 1) * 16 + math.floor(string.byte(id, 2) / 16)
  local v = redis.call('HGET', P .. 's:' .. b, id)
  if not v then return {} end
  local s = cmsgpack.unpack(v)
  return { s[1], s[2], s[3] }
elseif what == 'members' then
  -- listed users in name order, at most ARGV[2]
  local out = {}
  for _, m in ipairs(redis.call('ZRANGE', M, 0, tonumber(ARGV[2]) - 1)) do
    out[#out + 1] = name_of(m)
  end
  return out
elseif what == 'page_members' then
  -- listed users with a live session on page ARGV[2], in name order, at most ARGV[3]; users
  -- hidden everywhere are skipped, so this reads what it returns plus those.
  local pm, want, out, start = P .. 'pm:' .. ARGV[2], tonumber(ARGV[3]), {}, 0
  while #out < want do
    local chunk = redis.call('ZRANGE', pm, start, start + want - 1)
    if #chunk == 0 then break end
    for _, m in ipairs(chunk) do
      local user = name_of(m)
      if listed(user) then
        out[#out + 1] = user
        if #out >= want then break end
      end
    end
    start = start + #chunk
  end
  return out
elseif what == 'top' then
  -- the ARGV[2] busiest pages, ties by name: {page, count, page, count, ...}
  local n = tonumber(ARGV[2])
  local top = redis.call('ZREVRANGE', PG, 0, n - 1, 'WITHSCORES')
  if #top == 0 then return {} end
  local last = top[#top]
  local out = {}
  for k = 1, #top, 2 do
    if tonumber(top[k + 1]) > tonumber(last) then
      out[#out + 1] = top[k]
      out[#out + 1] = top[k + 1]
    end
  end
  -- the boundary score's pages in name order (Redis orders equal scores by name)
  local ties = redis.call('ZRANGEBYSCORE', PG, last, last, 'LIMIT', 0, n - #out / 2)
  for _, p in ipairs(ties) do
    out[#out + 1] = p
    out[#out + 1] = last
  end
  return out
end
return redis.error_reply('presence read: unknown request ' .. tostring(what))
