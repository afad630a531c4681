-- Claims up to `max` due mails for `owner` until `until`: their due time becomes
-- the lease end, so a dead claimant's mail is claimable again after it.
-- ARGV: P, now (ms), until (ms), owner, max.
-- Returns 5 values per mail: id, to, body, attempts, created (ms).
local P = ARGV[1]
local due = P .. 'mail:due'
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, id in ipairs(ids) do
  local key = P .. 'mail:m:' .. id
  local m = redis.call('HMGET', key, 'to', 'body', 'attempts', 'created')
  if m[1] then
    redis.call('ZADD', due, ARGV[3], id)
    redis.call('HSET', key, 'owner', ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = m[1]
    out[#out + 1] = m[2]
    out[#out + 1] = m[3]
    out[#out + 1] = m[4]
  else
    redis.call('ZREM', due, id)
  end
end
return out
