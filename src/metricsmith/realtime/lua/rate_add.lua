-- rate_add(key, width, now, n, keep): add n to the bucket of `now` (buckets `width` seconds wide)
-- in the rate hash `key` (always a KEYS entry), and drop the buckets more than `keep` buckets old.
-- Prepended to the scripts that use it (mark.lua, apply.lua) when they are loaded.
local function rate_add(key, width, now, n, keep)
  local idx = math.floor(now / width)
  local v = redis.call('HINCRBY', key, string.format('%d', idx), n)
  if v == n then
    local oldest = idx - keep
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if tonumber(f) < oldest then redis.call('HDEL', key, f) end
    end
  end
end
