-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, now. Drops expired tokens (and the index entries of tokens Redis
-- already expired); returns how many.
local now, removed = tonumber(ARGV[2]), 0
for _, n in ipairs(redis.call('SMEMBERS', k_users())) do
  for _, d in ipairs(redis.call('ZRANGE', k_tokens(n), 0, -1)) do
    local e = redis.call('HGET', k_token(d), 'expires')
    if not e or (tonumber(e) > 0 and tonumber(e) <= now) then
      redis.call('DEL', k_token(d))
      redis.call('ZREM', k_tokens(n), d)
      removed = removed + 1
    end
  end
end
if removed > 0 then bump() end
return removed
