-- Open-loop mixed load for `stockkeeper bench mixed` (driven by loadgen.py, which prepends
-- `local CONFIG = {...}` and common.lua). One connection per wrk thread, so each thread's Lua state is one
-- connection's: it follows a fixed schedule of intended send times (wrk2's model) and records
-- every answer with its intended time, its actual send time and its arrival time. Latency is then
-- measured from the intended time: a stalled server is charged for every request it held back
-- (no coordinated omission).

-- thread state: one connection ----------------------------------------------------------------

local cdf, gets, purchases, restocks, out
local clerk = { ["Authorization"] = "Bearer " .. CONFIG.clerk_token }
local clerk_post = { ["Authorization"] = "Bearer " .. CONFIG.clerk_token,
                     ["Content-Type"] = "application/json" }
local admin_post = { ["Authorization"] = "Bearer " .. CONFIG.admin_token,
                     ["Content-Type"] = "application/json" }
local ONE = '{"quantity":1}'

-- Each request is formatted on first use and kept: hundreds of threads need not format every
-- SKU's three requests before the first send.
local function prepared(cache, k, kind)
  local made = cache[k]
  if made == nil then
    local path = "/v1/items/" .. string.format(CONFIG.sku_format, k)
    if kind == "get" then
      made = wrk.format("GET", path, clerk)
    elseif kind == "purchase" then
      made = wrk.format("POST", path .. "/purchase", clerk_post, ONE)
    else
      made = wrk.format("POST", path .. "/restock", admin_post, ONE)
    end
    cache[k] = made
  end
  return made
end

local next_us, interval_us, end_us
local op, rank, intended_us, sent_us
local armed = false -- a request() that no delay() armed is wrk checking the script: no slot

function init(args)
  math.randomseed(CONFIG.seed + id * 7919)
  local skus = CONFIG.skus
  cdf = {}
  local total = 0
  for k = 1, skus do
    total = total + 1 / k ^ CONFIG.zipf
    cdf[k] = total
  end
  for k = 1, skus do cdf[k] = cdf[k] / total end
  cdf[skus] = 1.0
  gets, purchases, restocks = {}, {}, {}
  interval_us = CONFIG.interval_us
  -- Connections start evenly staggered over one interval, so the offered load is smooth.
  next_us = CONFIG.start_us + math.floor((id - 1) * interval_us / CONFIG.connections)
  end_us = CONFIG.end_us
  out = io.open(CONFIG.records_dir .. "/connection-" .. id .. ".txt", "w")
  out:setvbuf("full", 65536)
end

function delay()
  armed = true
  if next_us >= end_us then
    return 3600000 -- the schedule is over: stay idle until wrk stops
  end
  local wait_us = next_us - now_us()
  if wait_us <= 0 then
    return 0 -- behind schedule: send at once, and the lateness counts in the latency
  end
  -- wrk's timers have millisecond resolution: round down and, when early, count the latency
  -- from the actual send instead (loadgen.open_loop_latency_us).
  return math.floor(wait_us / 1000)
end

function request()
  if not armed then
    return prepared(gets, 1, "get")
  end
  armed = false
  sent_us = now_us()
  intended_us = next_us
  next_us = next_us + interval_us
  local u = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  rank = lo
  local r = math.random()
  if r < CONFIG.read_share then
    op = "get"
    return prepared(gets, lo, op)
  elseif r < CONFIG.read_share + (1 - CONFIG.read_share) * CONFIG.restock_share then
    op = "restock"
    return prepared(restocks, lo, op)
  end
  op = "purchase"
  return prepared(purchases, lo, op)
end

function response(status, headers, body)
  local done_us = now_us()
  local etag = headers["etag"] or headers["ETag"]
  local version = etag and tonumber(string.sub(etag, 2, -2)) or -1
  local on_hand = string.match(body, '"on_hand":(%-?%d+)') or "-1"
  local cache = headers["x-cache"] or headers["X-Cache"] or "-"
  out:write(string.format("%s %d %.0f %.0f %.0f %d %d %s %s\n", op, rank, math.floor(intended_us),
                          sent_us, done_us, status, version, on_hand, cache))
end
