-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, user, digest hex, label ('' with flag '0' = keep), label flag, expires
-- ('' = keep). 0 if the token is not the user's.
local n, d = ARGV[2], ARGV[3]
if redis.call('HGET', k_token(d), 'user') ~= n then return 0 end
if ARGV[5] == '1' then redis.call('HSET', k_token(d), 'label', ARGV[4]) end
if ARGV[6] ~= '' then
  local expires = tonumber(ARGV[6])
  redis.call('HSET', k_token(d), 'expires', ARGV[6])
  if expires > 0 then redis.call('EXPIREAT', k_token(d), expires)
  else redis.call('PERSIST', k_token(d)) end
end
bump()
return 1
