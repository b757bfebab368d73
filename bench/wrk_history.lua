-- wrk script for workload 4: chat conversations sent turn by turn. WRK_BODY_FILE holds one
-- request body per line, turn by turn across WRK_CONVERSATIONS conversations (line
-- t * conversations + k is turn t of conversation k). wrk thread n of WRK_THREADS sends the
-- conversations k with k % WRK_THREADS == n, turn 1 of each, then turn 2 of each, ..., so a
-- turn goes out only after the turn before it was answered (a thread's connections take
-- requests in order, and many more conversations than connections). "@@" in each body is
-- replaced by the thread and pass number: every pass is new conversations, as real traffic is.
local convs = tonumber(os.getenv("WRK_CONVERSATIONS"))
local threads = tonumber(os.getenv("WRK_THREADS"))
local lines = {}
for l in io.lines(os.getenv("WRK_BODY_FILE")) do
  lines[#lines + 1] = l
end

local created = 0
function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

local order, i, pass = {}, 1, 0
local headers = { ["Content-Type"] = "application/json" }
function init(args)
  for idx, l in ipairs(lines) do
    if ((idx - 1) % convs) % threads == tid then
      order[#order + 1] = l
    end
  end
end

function request()
  local body = order[i]:gsub("@@", tid .. "-" .. pass, 1)
  i = i + 1
  if i > #order then
    i, pass = 1, pass + 1
  end
  return wrk.format("POST", nil, headers, body)
end

-- done(): the RESULT line, from the file beside this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_report.lua")
