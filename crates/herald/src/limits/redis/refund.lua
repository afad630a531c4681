-- Gives back one message of today's count (a publish that failed).
--
-- KEYS: the visitor's messages-today counter. No ARGV. Returns the new count.
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
