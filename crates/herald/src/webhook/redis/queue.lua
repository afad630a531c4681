-- Runs after insert.lua (prepended); no KEYS: key names derive from the prefix P
-- (`P wh:`) in ARGV[1].
-- ARGV: P, mode (`feed`, `cas` or `replay`), expected cursor, new cursor, then
-- 6 values per delivery. `cas` checks the cursor first (-1: it moved).
local P = ARGV[1]
local mode = ARGV[2]
if mode == 'cas' then
  local current = redis.call('GET', P .. 'cursor') or ''
  if current ~= ARGV[3] then return -1 end
end
local n = 0
for i = 5, #ARGV, 6 do
  n = n + insert(P, ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], mode == 'replay')
end
if mode ~= 'replay' then redis.call('SET', P .. 'cursor', ARGV[4]) end
return n
