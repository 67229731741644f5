-- mark(): record n events now in every window of one RATE metric.
-- KEYS[i]: the rate hash of window i (metricsmith.realtime.keys.Keys.rate)
-- ARGV[1]: now (epoch seconds), ARGV[2]: n, ARGV[3]: buckets kept, ARGV[3 + i]: bucket width of window i
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
for i = 1, #KEYS do rate_add(KEYS[i], tonumber(ARGV[3 + i]), now, n, keep) end
return 1
