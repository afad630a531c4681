-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, endpoint, ordered, max, now, lease end, owner, cluster-wide cap (0: none).
-- Returns 7 values per claimed delivery: key, m, e, p, t, due, att.
local P, w = ARGV[1], ARGV[2]
local now = tonumber(ARGV[5])
local max = tonumber(ARGV[4])
local lease = P .. 'lease:' .. w
redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
local cap = tonumber(ARGV[8])
if cap > 0 then max = math.min(max, cap - redis.call('ZCARD', lease)) end
if max <= 0 then return {} end
local keys = {}
if ARGV[3] == '1' then
  local head = redis.call('ZRANGE', P .. 'ord:' .. w, 0, 0)[1]
  if head then
    local key = string.sub(head, string.find(head, '\n', 1, true) + 1)
    local at = redis.call('ZSCORE', P .. 'due:' .. w, key)
    if at and tonumber(at) <= now then keys = {key} end
  end
else
  keys = redis.call('ZRANGE', P .. 'due:' .. w, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)
end
local out = {}
for _, key in ipairs(keys) do
  redis.call('ZADD', P .. 'due:' .. w, ARGV[6], key)
  redis.call('ZADD', lease, ARGV[6], key)
  redis.call('HSET', P .. 'd:' .. key, 'owner', ARGV[7])
  table.insert(out, key)
  for _, v in ipairs(redis.call('HMGET', P .. 'd:' .. key, 'm', 'e', 'p', 't', 'due', 'att')) do
    table.insert(out, v or '')
  end
end
return out
