-- apply: count one stream batch, atomically, each event_id at most once per day.
-- Every key comes from KEYS (built by metricsmith.realtime.keys.apply_keys), none is built here:
--   KEYS[1] events counter hash        KEYS[2] revenue counter hash   KEYS[3] active-users gauge hash
--   KEYS[4] purchase histogram index   KEYS[5] events-rate index
--   KEYS[5 + w] (w = 1..nwin)          the events-rate hash of window w
--   KEYS[5 + nwin + 3 * (d - 1) + 1..3] for day d: its seen set, users set, purchase histogram hash
-- ARGV[1] TTL of the per-day sets (s)  ARGV[2] now (epoch s)  ARGV[3] label separator
-- ARGV[4] rate buckets kept            ARGV[5] nwin           ARGV[6] the events: one JSON array,
--   6 values per event: id, day, type, user, revenue, bucket
-- ARGV[6 + w] bucket width of window w ARGV[6 + nwin + d] day d (the label value of its fields)
-- Returns how many events were new (not in their day's seen set).
local ttl = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local SEP = ARGV[3]
local keep = tonumber(ARGV[4])
local nwin = tonumber(ARGV[5])
local data = cjson.decode(ARGV[6])
local events_key, revenue_key, users_gauge_key, hist_index_key, rate_index_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local day_slot = {}
for d = 1, #ARGV - 6 - nwin do day_slot[ARGV[6 + nwin + d]] = 5 + nwin + 3 * (d - 1) end
local new = 0
local byday = {}
for k = 0, #data / 6 - 1 do
  local day = data[k * 6 + 2]
  local t = byday[day]
  if not t then t = {}; byday[day] = t end
  t[#t + 1] = k * 6
end
local days = {}
local types = {}
local revenue = {}
local users = {}
local hist = {}
for day, offsets in pairs(byday) do
  local sk = KEYS[day_slot[day] + 1]
  local ids = {}
  for j = 1, #offsets do ids[j] = data[offsets[j] + 1] end
  local present = {}
  for s = 1, #ids, 1000 do
    local part = redis.call('SMISMEMBER', sk, unpack(ids, s, math.min(s + 999, #ids)))
    for q = 1, #part do present[s + q - 1] = part[q] end
  end
  local fresh = {}
  local here = {}
  for j = 1, #offsets do
    local id = ids[j]
    if present[j] == 0 and not here[id] then
      here[id] = true
      fresh[#fresh + 1] = id
      local o = offsets[j]
      local typ, user, rev, b = data[o + 3], data[o + 4], data[o + 5], data[o + 6]
      days[day] = true
      local tk = day .. SEP .. typ
      types[tk] = (types[tk] or 0) + 1
      revenue[day] = (revenue[day] or 0) + rev
      if user ~= '' then
        users[day] = users[day] or {}
        table.insert(users[day], user)
      end
      if b ~= '' then
        local h = hist[day] or {sum = 0, count = 0, b = {}}
        hist[day] = h
        h.b[b] = (h.b[b] or 0) + 1
        h.sum = h.sum + rev
        h.count = h.count + 1
      end
    end
  end
  for s = 1, #fresh, 1000 do
    redis.call('SADD', sk, unpack(fresh, s, math.min(s + 999, #fresh)))
  end
  new = new + #fresh
end
for tk, n in pairs(types) do redis.call('HINCRBYFLOAT', events_key, tk, n) end
for day, _ in pairs(days) do
  local slot = day_slot[day]
  redis.call('EXPIRE', KEYS[slot + 1], ttl)
  if revenue[day] > 0 then
    redis.call('HINCRBYFLOAT', revenue_key, day, string.format('%d', revenue[day]))
  end
  local u = users[day]
  if u then
    local uk = KEYS[slot + 2]
    for s = 1, #u, 1000 do
      redis.call('SADD', uk, unpack(u, s, math.min(s + 999, #u)))
    end
    redis.call('EXPIRE', uk, ttl)
    redis.call('HSET', users_gauge_key, day, redis.call('SCARD', uk))
  end
  local h = hist[day]
  if h then
    local hk = KEYS[slot + 3]
    for idx, n in pairs(h.b) do redis.call('HINCRBY', hk, idx, n) end
    redis.call('HINCRBYFLOAT', hk, 'sum', string.format('%d', h.sum))
    redis.call('HINCRBY', hk, 'count', h.count)
    redis.call('SADD', hist_index_key, day)
  end
end
if new > 0 then
  for w = 1, nwin do
    rate_add(KEYS[5 + w], tonumber(ARGV[6 + w]), now, new, keep)
  end
  redis.call('SADD', rate_index_key, '')
end
return new
