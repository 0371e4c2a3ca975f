-- Reads of the cluster view, several in one call (a node's cache refresh). Read-only.
-- KEYS[1] = "{ns}:n" (routes the call to the tag's slot). ARGV: requests of three arguments
-- each, what to read and two parameters (empty when unused):
--   "pc" page ""      live sessions on a page
--   "top" n ""        the n busiest pages, ties by name: {page, count, page, count, ...}
--   "user" name ""    {listed sessions, hidden sessions, last seen ms, last active ms, now ms} or {}
--   "mem" n ""        listed users in name order, at most n
--   "pm" page n/b     listed users with a listed session on the page, in name order, at most n
--                     (b: the member buckets of each node's page entries in this tag)
--   "sess" id buckets a session by id (16 bytes), among this tag's session buckets:
--                     {kind, user, ""}, or {} when no node holds it (its page is known only
--                     to the node that counts it)
-- Each read costs what it returns. Returns one answer per request, in order.
local P = string.sub(KEYS[1], 1, #KEYS[1] - 1)
local U, M, PG = P .. 'u', P .. 'm', P .. 'p'

local function after_nul(member)
  local z = string.find(member, '\0', 1, true)
  return string.sub(member, z + 1)
end

local function top(n)
  local list = redis.call('ZREVRANGE', PG, 0, n - 1, 'WITHSCORES')
  if #list == 0 then return {} end
  local last = list[#list]
  local out = {}
  for k = 1, #list, 2 do
    if tonumber(list[k + 1]) > tonumber(last) then
      out[#out + 1] = list[k]
      out[#out + 1] = list[k + 1]
    end
  end
  -- the boundary score's pages in name order (Redis orders equal scores by name)
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', PG, last, last, 'LIMIT', 0, n - #out / 2)) do
    out[#out + 1] = p
    out[#out + 1] = last
  end
  return out
end

-- The member bucket of a page in each node's page entries (the node computes the same).
local function pm_bucket(page, buckets)
  local h = 0
  for k = 1, #page do h = (h * 31 + string.byte(page, k)) % 65521 end
  return h % buckets
end

local function page_members(page, want, buckets)
  -- Each node keeps its listed sessions' entries "page_len page sortkey \0 user \0 id"
  -- in a bucket by page: a user with several tabs there is listed once, and the rest of
  -- their entries are skipped by range. The nodes' lists are merged by name.
  local pre = string.format('%04x', #page) .. page
  local b = pm_bucket(page, buckets)
  local skip_id = string.rep('\255', 17)
  local heads, seen = {}, {}
  -- Live nodes, and parked ones: their sessions stay on their pages until they expire.
  local nums = redis.call('ZRANGE', P .. 'n', 0, -1)
  for _, num in ipairs(redis.call('HKEYS', P .. 'parked')) do nums[#nums + 1] = num end
  for _, num in ipairs(nums) do
    local key, from, got = P .. 'pm:' .. num .. ':' .. b, '[' .. pre, 0
    while got < want do
      local chunk = redis.call('ZRANGEBYLEX', key, from, '(' .. pre .. '\255', 'LIMIT', 0, want - got)
      if #chunk == 0 then break end
      local last
      for _, e in ipairs(chunk) do
        local head = string.sub(e, #pre + 1, #e - 17)
        if head ~= last then
          if not seen[head] then
            seen[head] = true
            heads[#heads + 1] = head
          end
          got = got + 1
          last = head
          if got >= want then break end
        end
      end
      from = '(' .. pre .. last .. '\0' .. skip_id
    end
  end
  table.sort(heads)
  local out = {}
  for k = 1, math.min(want, #heads) do out[k] = after_nul(heads[k]) end
  return out
end

local out = {}
for i = 1, #ARGV, 3 do
  local what, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local r
  if what == 'pc' then
    r = tonumber(redis.call('ZSCORE', PG, a) or 0)
  elseif what == 'top' then
    r = top(tonumber(a))
  elseif what == 'user' then
    local v = redis.call('HGET', U, a)
    if v then
      local rec = cmsgpack.unpack(v)
      local t = redis.call('TIME')
      r = { rec[1], rec[2], rec[4], rec[5], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) }
    else
      r = {}
    end
  elseif what == 'mem' then
    r = {}
    for _, m in ipairs(redis.call('ZRANGE', M, 0, tonumber(a) - 1)) do r[#r + 1] = after_nul(m) end
  elseif what == 'pm' then
    local want, buckets = string.match(b, '^(%d+)/(%d+)$')
    r = page_members(a, tonumber(want), tonumber(buckets))
  elseif what == 'sess' then
    local bucket = (string.byte(a, 1) * 16 + math.floor(string.byte(a, 2) / 16)) % tonumber(b)
    local v = redis.call('HGET', P .. 's:' .. bucket, a)
    local s = v and cmsgpack.unpack(v)
    if s and s[1] ~= 'x' then
      r = { s[1], s[2], '' }
    else
      r = {}
    end
  else
    return redis.error_reply('presence read: unknown request ' .. tostring(what))
  end
  out[#out + 1] = r
end
return out
