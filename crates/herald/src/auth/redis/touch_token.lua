-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, digest hex, at, origin. Not a change: no version bump.
if redis.call('EXISTS', k_token(ARGV[2])) == 0 then return 0 end
redis.call('HSET', k_token(ARGV[2]), 'last_access', ARGV[3], 'last_origin', ARGV[4])
return 1
