-- Moves scheduled messages due at or before ARGV[1] to the log and their topics.
-- Returns `[position, json, ...]`.
--
-- KEYS: scheduled IDs by due time, scheduled messages (hash), the log, the set of
-- topics. ARGV: now (s), log max length, oldest position kept in topics (ms), the
-- key prefix (for per-topic keys), most messages taken.
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[5])
local out = {}
for _, hid in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], hid)
  redis.call('ZREM', KEYS[1], hid)
  redis.call('HDEL', KEYS[2], hid)
  if raw then
    local sep = string.find(raw, '\n', 1, true)
    local topic = string.sub(raw, 1, sep - 1)
    local json = string.sub(raw, sep + 1)
    redis.call('SREM', ARGV[4] .. 's:' .. topic, hid)
    local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 't', topic, 'm', json)
    local r = redis.pcall('XADD', ARGV[4] .. 't:' .. topic, 'MINID', '~', ARGV[3], id, 'm', json)
    if not (type(r) == 'table' and r.err) then
      redis.call('SADD', KEYS[4], topic)
    end
    table.insert(out, id)
    table.insert(out, json)
  end
end
return out
