-- wrk script: POST the JSON body in $WRK_BODY_FILE, print one machine-readable RESULT line.
-- Latency is wrk's: from request write to the end of the whole response (for SSE: the
-- whole stream, since wrk reads the chunked body to its end).
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

-- done(): the RESULT line, from the file beside this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_report.lua")
