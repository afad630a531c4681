-- Trims a topic's history to positions at or after ARGV[1]; forgets an emptied topic.
--
-- KEYS: the topic's history stream, the set of topics. ARGV: oldest position kept
-- (ms), the topic. Returns how many entries were trimmed.
local n = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return n
