-- What every wrk script of `stockkeeper bench` starts with (the Python runner prepends
-- `local CONFIG = {...}` and then this): a microsecond clock, and thread n aimed at target n mod K.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } sk_timespec;
int clock_gettime(int clock_id, sk_timespec *tp);
]]
local timespec = ffi.new("sk_timespec")
local CLOCK_REALTIME = 0 -- the audit log's clock, so answers can be judged against commits

local function now_us()
  ffi.C.clock_gettime(CLOCK_REALTIME, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

-- main state ------------------------------------------------------------------------------------

local created = 0

function setup(thread)
  created = created + 1
  local target = CONFIG.targets[(created - 1) % #CONFIG.targets + 1]
  thread.addr = wrk.lookup(target[1], target[2])[1]
  thread:set("id", created)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("@@ requests %d\n@@ connect %d\n@@ read %d\n@@ write %d\n",
                         summary.requests, e.connect, e.read, e.write))
  io.write(string.format("@@ status %d\n@@ timeout %d\n", e.status, e.timeout))
end

