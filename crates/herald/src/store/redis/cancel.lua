-- Removes a topic's scheduled messages whose `sequence_id` is ARGV[1].
--
-- KEYS: scheduled IDs by due time, scheduled messages (hash), the topic's scheduled
-- IDs. ARGV: the sequence ID. Returns how many were removed.
local n = 0
for _, hid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local raw = redis.call('HGET', KEYS[2], hid)
  if not raw then
    redis.call('SREM', KEYS[3], hid)
  else
    local sep = string.find(raw, '\n', 1, true)
    local ok, m = pcall(cjson.decode, string.sub(raw, sep + 1))
    if ok and m.sequence_id == ARGV[1] then
      redis.call('ZREM', KEYS[1], hid)
      redis.call('HDEL', KEYS[2], hid)
      redis.call('SREM', KEYS[3], hid)
      n = n + 1
    end
  end
end
return n
