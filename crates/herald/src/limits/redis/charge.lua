-- Checks and takes a request's limits, all or none. Returns `{0, 0}` when admitted,
-- else `{limit, retry_ms}` with limit 1 requests, 2 messages, 3 subscriptions,
-- 4 new topics (the order in which they are checked, as on one node).
--
-- KEYS: requests TAT, topics TAT, messages today, open streams (hash).
-- ARGV: now ms ('' = Redis's clock), request replenish ms (0: no request token),
-- request burst, daily message limit (0: not a publish), stream limit (-1: no
-- stream), node ID, heartbeat key prefix, stream-count TTL ms, new topics,
-- topic replenish ms, topic burst, heartbeat TTL ms.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function gcra(key, replenish, burst, n)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + replenish * n
  local ahead = new_tat - now
  local capacity = replenish * burst
  if ahead > capacity then return nil, ahead - capacity end
  return new_tat, 0
end
local request_tat, topic_tat, retry
local request_replenish = tonumber(ARGV[2])
if request_replenish > 0 then
  request_tat, retry = gcra(KEYS[1], request_replenish, tonumber(ARGV[3]), 1)
  if not request_tat then return {1, retry} end
end
local day = 86400000
local until_midnight = (math.floor(now / day) + 1) * day - now
local daily = tonumber(ARGV[4])
if daily > 0 then
  local used = tonumber(redis.call('GET', KEYS[3])) or 0
  if used >= daily then return {2, until_midnight} end
end
local stream_limit = tonumber(ARGV[5])
if stream_limit >= 0 then
  local open = 0
  local counts = redis.call('HGETALL', KEYS[4])
  for i = 1, #counts, 2 do
    if redis.call('EXISTS', ARGV[7] .. counts[i]) == 1 then
      open = open + tonumber(counts[i + 1])
    else
      redis.call('HDEL', KEYS[4], counts[i])
    end
  end
  if open >= stream_limit then return {3, 0} end
end
local new_topics = tonumber(ARGV[9])
if new_topics > 0 then
  topic_tat, retry = gcra(KEYS[2], tonumber(ARGV[10]), tonumber(ARGV[11]), new_topics)
  if not topic_tat then return {4, retry} end
end
if request_tat then redis.call('SET', KEYS[1], request_tat, 'PX', request_tat - now) end
if topic_tat then redis.call('SET', KEYS[2], topic_tat, 'PX', topic_tat - now) end
if daily > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], until_midnight)
end
if stream_limit >= 0 then
  -- This node is alive (it is serving): a count never outlives its heartbeat's
  -- absence, e.g. when the first heartbeat could not be written.
  redis.call('SET', ARGV[7] .. ARGV[6], 1, 'PX', ARGV[12])
  redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
end
return {0, 0}
