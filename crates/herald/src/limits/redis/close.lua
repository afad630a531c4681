-- Releases one open stream of this node (ARGV[1]).
--
-- KEYS: the visitor's open streams (hash: node → count). ARGV: node ID.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
