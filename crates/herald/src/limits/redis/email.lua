-- Takes one token of a visitor's e-mail bucket (GCRA, as charge.lua). Returns
-- `{0, 0}` when admitted, else `{1, retry_ms}`.
-- KEYS: e-mails TAT. ARGV: replenish ms, burst.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replenish = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + replenish
local ahead = new_tat - now
local capacity = replenish * tonumber(ARGV[2])
if ahead > capacity then return {1, ahead - capacity} end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {0, 0}
