-- The purchase storm of `stockkeeper bench oversell` (driven by storm.py, which prepends
-- `local CONFIG = {...}` and common.lua): closed loop, thread n drives server n with its share
-- of the attempts over several connections, counts every answer by status and problem code, and
-- writes what it saw to a file every 100 answers and at its last answer, so the runner can show
-- progress and stop wrk as soon as every thread's count reaches its share.

local quota, sent, answered, outcomes, first_us, purchase

local function write_state(text)
  -- Written aside, then renamed over the last one: the runner never reads half a file.
  local path = CONFIG.out_dir .. "/state-" .. id .. ".txt"
  local file = io.open(path .. ".tmp", "w")
  file:write(text)
  file:close()
  os.rename(path .. ".tmp", path)
end

function init(args)
  quota, sent, answered, outcomes = CONFIG.quotas[id], 0, 0, {}
  local headers = { ["Authorization"] = "Bearer " .. CONFIG.clerk_token,
                    ["Content-Type"] = "application/json" }
  purchase = wrk.format("POST", "/v1/items/" .. CONFIG.sku .. "/purchase", headers,
                        '{"quantity":1}')
end

-- Every request a connection sends follows its own delay() (the thread's connections interleave
-- between the two), so the share is counted here: a 0 ms delay is exactly one request.
function delay()
  if sent >= quota then
    return 3600000 -- this thread's share is sent: its connections go quiet
  end
  sent = sent + 1
  first_us = first_us or now_us()
  return 0
end

function request()
  return purchase
end

local function state()
  local lines = { string.format("%.0f %.0f", first_us, now_us()) }
  for k, count in pairs(outcomes) do
    lines[#lines + 1] = count .. " " .. k
  end
  return table.concat(lines, "\n") .. "\n"
end

function response(status, headers, body)
  answered = answered + 1
  local key = tostring(status)
  if status ~= 200 then
    local code = string.match(body, '"code"%s*:%s*"([^"]+)"')
    if code then key = key .. " " .. code end
  end
  outcomes[key] = (outcomes[key] or 0) + 1
  if answered % 100 == 0 or answered == quota then
    write_state(state())
  end
end
