-- Claims up to ARGV[3] jobs due at ARGV[2] (unix ms): a claimed job's score in
-- `due` becomes its lease end ARGV[4], so a node that dies leaves it claimable
-- again once the lease lapses. Jobs whose subscription is gone are dropped.
-- Returns 6 values per job: id, endpoint, auth, p256dh, payload, attempts.
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local job = redis.call('HGET', P .. 'jobs', id)
  local j = job and cjson.decode(job)
  local sub = j and redis.call('HGET', P .. 'subs', j.e)
  if sub then
    local s = cjson.decode(sub)
    redis.call('ZADD', P .. 'due', ARGV[4], id)
    for _, v in ipairs({id, j.e, s.auth, s.p256dh, j.p, j.a}) do table.insert(out, v) end
  else
    redis.call('ZREM', P .. 'due', id)
    redis.call('HDEL', P .. 'jobs', id)
    if j then redis.call('SREM', P .. 'ep:' .. j.e, id) end
  end
end
return out
