-- Appends one event to the log and, if `cached`, to its topic's history, under one
-- position; returns the position. The topic append can only fail if its stream is
-- ahead of the log (the log was deleted and the clock went back): the log entry is
-- then removed again in the same script, so nothing half-done is ever seen.
--
-- KEYS: the log, the topic's history stream, the set of topics.
-- ARGV: topic, message JSON, cached ('1'/'0'), log max length, oldest position kept
-- in the topic (ms).
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 't', ARGV[1], 'm', ARGV[2])
if ARGV[3] == '1' then
  local r = redis.pcall('XADD', KEYS[2], 'MINID', '~', ARGV[5], id, 'm', ARGV[2])
  if type(r) == 'table' and r.err then
    redis.call('XDEL', KEYS[1], id)
    return redis.error_reply('herald: topic stream ahead of the log: ' .. r.err)
  end
  redis.call('SADD', KEYS[3], ARGV[1])
end
return id
