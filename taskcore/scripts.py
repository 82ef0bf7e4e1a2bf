"""The atomic Redis operations, as Lua. Each script is one round trip and runs alone on the server, so
no interleaving of supervisors, result handlers and workers can run a fingerprint twice or strand a
follower.

Conventions shared by all scripts:
- Keys are built inside the scripts from the prefix in ARGV[1] plus the suffixes of keys.py
  (a batch's keys are only known as the script runs). This is fine on a single Redis or a
  non-cluster ElastiCache; it is not Redis-Cluster safe.
- Time always comes from the caller (ARGV, ms), never from TIME, so tests are deterministic.
- A record that is not final still has a TTL (RESULT_TTL + the inflight TTL), so an abandoned
  task cannot keep a key forever.
- `stats` (hash) holds counters (cache_hit, cache_miss, cache_coalesced, cache_bypass, exists,
  succeeded, failed) and gauges (queued, running); `tput:<minute>` counts final tasks per minute.
"""

from __future__ import annotations

# Marks a task final, wakes its long-pollers, counts it. Shared by COMPLETE and UNDO_ADMIT.
_FINISH = """
local function is_final(status)
  return status == 'succeeded' or status == 'failed'
end

local function finish(prefix, id, prev, fields, result_ttl, done_ttl, minute)
  local tkey = prefix .. 'task:' .. id
  redis.call('HSET', tkey, unpack(fields))
  redis.call('EXPIRE', tkey, result_ttl)
  local stats = prefix .. 'stats'
  if prev == 'queued' or prev == 'running' then redis.call('HINCRBY', stats, prev, -1) end
  local status = redis.call('HGET', tkey, 'status')
  redis.call('HINCRBY', stats, status, 1)
  local done = prefix .. 'done:' .. id
  redis.call('LPUSH', done, '1')
  redis.call('EXPIRE', done, done_ttl)
  local tput = prefix .. 'tput:' .. minute
  redis.call('INCR', tput)
  redis.call('EXPIRE', tput, 3600)
end
"""

# KEYS: none.
# ARGV: prefix, now_ms, live_cutoff_ms, result_ttl_s, dispatch_mode ("round_robin"|"shared"), n, token,
#       deadline_ms, recent_cap, then n x (task_id, fingerprint, cache "1"|"0", type, complexity,
#       payload_json, inflight_ttl_ms).
# Returns "expired" and changes nothing when Redis runs it after deadline_ms (its own clock): the
# caller has given up by then and answered 503, so the admission must not happen behind its back
# (a Redis that froze runs the commands it had received when it resumes).
# A leader goes to the next live worker in turn (the `rr` cursor), skipping those marked
# unconfirmed:<id> (their queue did not confirm a publish lately: dispatch.submit), or to the shared
# queue when none is left or the mode is "shared".
# Returns JSON: [{task_id, outcome, status, cache, worker_id, leader, result?}] in input order, where
#   outcome is "dispatch" (publish it: a leader, cache "miss", or a "bypass"), "hit" (with the cached
#   result, as JSON text), "coalesced" or "exists".
# `token` (unique per admission call) is kept in the record, so the same call re-sent after a lost
# reply gets its first answer back rather than "exists" (which would leave a leader unpublished).
# Every new record also enters `recent` (GET /tasks), a zset scored now_ms x 1000 + position in the
# call (a batch keeps its order; exact in a double until the year 2255), trimmed to the newest
# recent_cap in the same step, so the index stays bounded whatever the load. UNDO_ADMIT takes its
# ids out again; readers skip the ids whose record expired. It lives as long as the longest-lived
# record it was given.
ADMIT = """
local prefix, now = ARGV[1], ARGV[2]
local cutoff, result_ttl, mode, n = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local token = ARGV[7]
local clock = redis.call('TIME')
if tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(ARGV[8]) then
  return 'expired'
end
local stats = prefix .. 'stats'
local recent, recent_cap, recent_ttl = prefix .. 'recent', tonumber(ARGV[9]), 0
local live = nil
local out, seen = {}, {}
for i = 0, n - 1 do
  local b = 10 + i * 7
  local id, fp, cache, ttype = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local complexity, payload, ttl = ARGV[b + 4], ARGV[b + 5], tonumber(ARGV[b + 6])
  local tkey = prefix .. 'task:' .. id
  local pending_ttl = result_ttl * 1000 + ttl
  local base = {'type', ttype, 'fingerprint', fp, 'payload', payload, 'complexity', complexity,
                'submitted_at', now, 'attempt', '0', 'admission', token}
  local entry
  if redis.call('EXISTS', tkey) == 1 then
    local rec = redis.call('HMGET', tkey, 'status', 'cache', 'worker_id', 'leader', 'admission')
    local outcome = 'exists'
    if rec[5] == token and not seen[id] then
      -- This very call, re-sent: answer as the first time.
      outcome = 'dispatch'
      if rec[2] == 'hit' or rec[2] == 'coalesced' then outcome = rec[2] end
    else
      -- An idempotency key seen before: report the existing task, dispatch nothing.
      redis.call('HINCRBY', stats, 'exists', 1)
    end
    entry = {task_id = id, outcome = outcome, status = rec[1] or '', cache = rec[2] or '',
             worker_id = rec[3] or '', leader = rec[4] or ''}
  else
    local cached = false
    if cache == '1' then cached = redis.call('GET', prefix .. 'result:' .. fp) end
    local leader = false
    if cache == '1' and not cached then leader = redis.call('GET', prefix .. 'inflight:' .. fp) end
    if cached then
      redis.call('HSET', tkey, 'status', 'succeeded', 'cache', 'hit', 'worker_id', '', 'result', cached,
                 'started_at', now, 'finished_at', now, unpack(base))
      redis.call('EXPIRE', tkey, result_ttl)
      redis.call('HINCRBY', stats, 'cache_hit', 1)
      redis.call('HINCRBY', stats, 'succeeded', 1)
      entry = {task_id = id, outcome = 'hit', status = 'succeeded', cache = 'hit', worker_id = '',
               leader = '', result = cached}
    elseif leader then
      local fkey = prefix .. 'followers:' .. fp
      redis.call('SADD', fkey, id)
      -- The set must outlive nothing but its leader's claim on the fingerprint.
      local left = redis.call('PTTL', prefix .. 'inflight:' .. fp)
      if left > 0 then redis.call('PEXPIRE', fkey, left) end
      local worker = redis.call('HGET', prefix .. 'task:' .. leader, 'worker_id') or ''
      redis.call('HSET', tkey, 'status', 'queued', 'cache', 'coalesced', 'worker_id', worker,
                 'leader', leader, unpack(base))
      redis.call('PEXPIRE', tkey, pending_ttl)
      redis.call('HINCRBY', stats, 'cache_coalesced', 1)
      redis.call('HINCRBY', stats, 'queued', 1)
      entry = {task_id = id, outcome = 'coalesced', status = 'queued', cache = 'coalesced',
               worker_id = worker, leader = leader}
    else
      local worker = 'shared'
      if mode ~= 'shared' then
        if live == nil then
          -- Live workers whose queue confirmed the last publish sent to it (see dispatch.submit).
          live = {}
          for _, w in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'workers', cutoff, '+inf')) do
            if redis.call('EXISTS', prefix .. 'unconfirmed:' .. w) == 0 then live[#live + 1] = w end
          end
          table.sort(live)
        end
        if #live > 0 then
          local turn = redis.call('INCR', prefix .. 'rr')
          worker = live[((turn - 1) % #live) + 1]
        end
      end
      local outcome_cache = 'bypass'
      if cache == '1' then
        outcome_cache = 'miss'
        redis.call('SET', prefix .. 'inflight:' .. fp, id, 'PX', ttl)
      end
      redis.call('HSET', tkey, 'status', 'queued', 'cache', outcome_cache, 'worker_id', worker, unpack(base))
      redis.call('PEXPIRE', tkey, pending_ttl)
      redis.call('HINCRBY', stats, 'cache_' .. outcome_cache, 1)
      redis.call('HINCRBY', stats, 'queued', 1)
      entry = {task_id = id, outcome = 'dispatch', status = 'queued', cache = outcome_cache,
               worker_id = worker, leader = ''}
    end
    redis.call('ZADD', recent, tonumber(now) * 1000 + i, id)
    if pending_ttl > recent_ttl then recent_ttl = pending_ttl end
  end
  seen[id] = true
  out[#out + 1] = entry
end
if recent_ttl > 0 then
  redis.call('ZREMRANGEBYRANK', recent, 0, -(recent_cap + 1))
  if redis.call('PTTL', recent) < recent_ttl then redis.call('PEXPIRE', recent, recent_ttl) end
end
return cjson.encode(out)
"""

# Undoes admissions whose messages could not be published, so a 503 leaves nothing behind.
# KEYS: none.
# ARGV: prefix, now_ms, result_ttl_s, done_ttl_s, minute, n, then n x (task_id, fingerprint, outcome).
# A record is removed only while it is still as admitted (queued, or the cache hit it was): one a
# worker already started or finished is real work and stays. Followers of an undone leader that
# came from other requests can no longer be served by it, so they fail with a clear error instead
# of waiting forever. Returns the number of records removed.
UNDO_ADMIT = _FINISH + """
local prefix, now, result_ttl, done_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local minute, n = ARGV[5], tonumber(ARGV[6])
local stats = prefix .. 'stats'
local removed, orphaned = 0, {}
for i = 0, n - 1 do
  local b = 7 + i * 3
  local id, fp, outcome = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local tkey = prefix .. 'task:' .. id
  local rec = redis.call('HMGET', tkey, 'status', 'cache')
  if outcome ~= 'exists' and (rec[1] == 'queued' or (outcome == 'hit' and rec[2] == 'hit')) then
    redis.call('DEL', tkey)
    redis.call('ZREM', prefix .. 'recent', id)
    removed = removed + 1
    if rec[1] == 'queued' then redis.call('HINCRBY', stats, 'queued', -1) end
    if rec[2] == 'hit' then redis.call('HINCRBY', stats, 'succeeded', -1) end
    if rec[2] then redis.call('HINCRBY', stats, 'cache_' .. rec[2], -1) end
    redis.call('SREM', prefix .. 'followers:' .. fp, id)
    local ikey = prefix .. 'inflight:' .. fp
    if outcome == 'dispatch' and redis.call('GET', ikey) == id then
      redis.call('DEL', ikey)
      orphaned[#orphaned + 1] = {fp, id}
    end
  end
end
for _, pair in ipairs(orphaned) do
  local fkey = prefix .. 'followers:' .. pair[1]
  for _, follower in ipairs(redis.call('SMEMBERS', fkey)) do
    local prev = redis.call('HGET', prefix .. 'task:' .. follower, 'status')
    if prev and not is_final(prev) then
      finish(prefix, follower, prev, {'status', 'failed', 'finished_at', now, 'error',
             'leader ' .. pair[2] .. ' could not be dispatched (broker unavailable); submit again'},
             result_ttl, done_ttl, minute)
    end
  end
  redis.call('DEL', fkey)
end
return removed
"""

# Stores a batch of results. Idempotent: a task already final is left alone ("duplicate").
# KEYS: none.
# ARGV: prefix, cache_ttl_s, result_ttl_s, done_ttl_s, minute, n, then n x (task_id, fingerprint,
#       status, result_json ("" when failed), error ("" when succeeded), worker_id, started_at,
#       finished_at, attempt).
# The task is the fingerprint's leader if it was admitted as a cache "miss" or still holds
# inflight:<fp>; only a leader fills result:<fp> (on success; a "bypass" task never writes the
# cache) and resolves followers:<fp> with its own outcome. Long-pollers are woken through
# done:<id> (LPUSH, TTL done_ttl).
# A result for an id without a record creates none ("unknown"): the id was never admitted here, or
# its record is gone (RESULT_TTL after the task's time limits, or removed), and nobody can read it.
# A cache hit and a coalesced follower never have a result of their own (no worker runs them).
# Only if that id still holds inflight:<fp> (its record was deleted, not expired: a record outlives
# its claim) may followers wait on it: they and the cache get the result ("unknown_leader").
# Returns JSON: ["completed"|"duplicate"|"unknown"|"unknown_leader", ...] in input order.
COMPLETE = _FINISH + """
local prefix, cache_ttl, result_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local done_ttl, minute, n = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local out = {}

local function lead(fp, status, result, outcome)
  if status == 'succeeded' then redis.call('SET', prefix .. 'result:' .. fp, result, 'EX', cache_ttl) end
  local fkey = prefix .. 'followers:' .. fp
  for _, follower in ipairs(redis.call('SMEMBERS', fkey)) do
    local prev = redis.call('HGET', prefix .. 'task:' .. follower, 'status')
    if prev and not is_final(prev) then
      finish(prefix, follower, prev, outcome, result_ttl, done_ttl, minute)
    end
  end
  redis.call('DEL', fkey)
end

for i = 0, n - 1 do
  local b = 7 + i * 9
  local id, fp, status, result, err = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local outcome = {'status', status, 'fingerprint', fp, 'worker_id', ARGV[b + 5],
                   'started_at', ARGV[b + 6], 'finished_at', ARGV[b + 7], 'attempt', ARGV[b + 8]}
  if status == 'succeeded' then
    outcome[#outcome + 1] = 'result'; outcome[#outcome + 1] = result
  else
    outcome[#outcome + 1] = 'error'; outcome[#outcome + 1] = err
  end
  local tkey = prefix .. 'task:' .. id
  local rec = redis.call('HMGET', tkey, 'status', 'cache')
  local ikey = prefix .. 'inflight:' .. fp
  if is_final(rec[1]) then
    out[#out + 1] = 'duplicate'
  elseif not rec[1] then
    if redis.call('GET', ikey) == id then
      lead(fp, status, result, outcome)
      redis.call('DEL', ikey)
      out[#out + 1] = 'unknown_leader'
    else
      out[#out + 1] = 'unknown'
    end
  else
    finish(prefix, id, rec[1], outcome, result_ttl, done_ttl, minute)
    local holder = redis.call('GET', ikey)
    if rec[2] == 'miss' or holder == id then
      lead(fp, status, result, outcome)
      if holder == id then redis.call('DEL', ikey) end
    end
    out[#out + 1] = 'completed'
  end
end
return cjson.encode(out)
"""

# A worker starts an attempt.
# KEYS: none.
# ARGV: prefix, task_id, worker_id, started_at_ms, attempt, result_ttl_s, running_ttl_ms,
#       redelivered ("1" or "0"), delivery_limit (0: the broker counts deliveries), stolen_from
#       (the worker whose queue the message was taken from by another, or "": kept as `stolen_from`).
# Returns "running", "final" (already done: the worker should ack without running it again),
# "missing" (no record: the admission was undone or the record expired) or "poison" (delivered
# again more than delivery_limit times: the worker dead-letters it unrun).
# A leader's inflight:<fp> is refreshed to running_ttl_ms so a long queue wait cannot let it lapse
# while the work is in hand.
# Delivery counting, for classic queues (no x-delivery-limit): a message the broker delivers again
# (its worker died or lost its connection holding it) has the redelivered flag; each such delivery
# is counted in the record's `deliveries` field, before the attempt runs, so that an attempt that
# kills its worker is counted too. Past the limit the message is poison, as a quorum queue would
# dead-letter it after delivery_limit returns: both run it at most 1 + delivery_limit times.
MARK_RUNNING = """
local prefix, id, worker, started, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local result_ttl, running_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local redelivered, limit, stolen_from = ARGV[8], tonumber(ARGV[9]), ARGV[10]
local tkey = prefix .. 'task:' .. id
local rec = redis.call('HMGET', tkey, 'status', 'fingerprint')
if not rec[1] then return 'missing' end
if rec[1] == 'succeeded' or rec[1] == 'failed' then return 'final' end
if limit > 0 and redelivered == '1' and redis.call('HINCRBY', tkey, 'deliveries', 1) > limit then
  return 'poison'
end
redis.call('HSET', tkey, 'status', 'running', 'worker_id', worker, 'started_at', started, 'attempt', attempt)
if stolen_from ~= '' then
  redis.call('HSET', tkey, 'stolen_from', stolen_from)
else
  redis.call('HDEL', tkey, 'stolen_from')  -- an earlier attempt's, if any, says nothing of this one
end
redis.call('PEXPIRE', tkey, result_ttl * 1000 + running_ttl)
if rec[1] == 'queued' then
  redis.call('HINCRBY', prefix .. 'stats', 'queued', -1)
  redis.call('HINCRBY', prefix .. 'stats', 'running', 1)
end
local ikey = prefix .. 'inflight:' .. rec[2]
if redis.call('GET', ikey) == id then redis.call('PEXPIRE', ikey, running_ttl) end
return 'running'
"""

# Forgets dead workers, for the janitor, once their queues are handled.
# KEYS: none.
# ARGV: prefix, live_cutoff_ms, worker_id...
# Removes a worker from `workers` and deletes worker:<id> only if its heartbeat is still older than
# the cutoff: a worker that came back since the janitor looked is kept. Returns the removed ids.
REAP_WORKERS = """
local prefix, cutoff = ARGV[1], tonumber(ARGV[2])
local zkey = prefix .. 'workers'
local removed = {}
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', zkey, ARGV[i])
  if score and tonumber(score) < cutoff then
    redis.call('ZREM', zkey, ARGV[i])
    redis.call('DEL', prefix .. 'worker:' .. ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
"""

# Points queued tasks at the worker (or "shared") whose queue now holds their message.
# KEYS: none.  ARGV: prefix, worker_id, task_id...
# Only records still "queued" change (one already running or final says where it really ran).
# Returns the number of records changed.
REASSIGN = """
local prefix, worker, changed = ARGV[1], ARGV[2], 0
for i = 3, #ARGV do
  local tkey = prefix .. 'task:' .. ARGV[i]
  if redis.call('HGET', tkey, 'status') == 'queued' then
    redis.call('HSET', tkey, 'worker_id', worker)
    changed = changed + 1
  end
end
return changed
"""


# Reads many task records at once (GET /results?ids=).
# KEYS: none.
# ARGV: prefix, task_id...
# Returns JSON: one object per id, in order, {field: value} of its task hash ({} for none). One
# command and one JSON document instead of a pipeline of HGETALLs, each parsed on the client.
GET_MANY = """
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local flat = redis.call('HGETALL', prefix .. 'task:' .. ARGV[i])
  local rec = {}
  for j = 1, #flat, 2 do rec[flat[j]] = flat[j + 1] end
  out[#out + 1] = rec
end
return cjson.encode(out)
"""
