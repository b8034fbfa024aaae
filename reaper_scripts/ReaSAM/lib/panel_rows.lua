-- @noindex
-- What the job panel's views show, in words: the daemon's state, a job's state with its progress
-- and the time left, and the buttons a job offers. Both views (ReaImGui and gfx) use these, so
-- they show the same information.
local rows = {}

-- The estimated time left of a running job from its start (epoch seconds) and fraction: the
-- time so far, scaled. nil while there is too little progress to tell.
function rows.eta(entry, now)
  local f, started = tonumber(entry.fraction), tonumber(entry.started)
  if entry.state ~= "running" or not f or not started or f < 0.01 or f >= 1 then return nil end
  local left = math.max(0, (now - started) * (1 - f) / f)
  return string.format("%d:%02d left", math.floor(left / 60), math.floor(left % 60))
end

-- The daemon's state; running: its version, the engines it can use (from its pong) and the one
-- the actions ask for (the engine setting), its device and its jobs.
function rows.daemon_line(d, engine)
  if d.state ~= "running" then
    return "Daemon: " .. d.state .. (d.error and d.error ~= "" and (" (" .. d.error .. ")") or "")
  end
  local parts = { "Daemon: running" .. (d.version and (" " .. d.version) or "") }
  if type(d.engines) == "string" and d.engines ~= "" then
    parts[#parts + 1] = "engines " .. d.engines:gsub(",%s*", ", ")
  end
  if engine then parts[#parts + 1] = "using " .. engine end
  if d.device then parts[#parts + 1] = "device " .. d.device end
  if d.running then parts[#parts + 1] = string.format("%d running, %d queued", d.running, d.queued or 0) end
  return table.concat(parts, " · ")
end

function rows.model_line(d)
  if d.state ~= "running" then return "" end
  local text = "Model: " .. tostring(d.model_state or "?")
  if d.keep_alive_left then
    text = text .. string.format(" · unloads in %d:%02d", math.floor(d.keep_alive_left / 60),
      math.floor(d.keep_alive_left % 60))
  end
  return text
end

-- A row's state as words: "running 42% · 0:12 left", "failed: ... (code)".
function rows.state_text(row)
  if row.state == "running" then
    return string.format("running %d%%%s", math.floor(row.fraction * 100 + 0.5), row.eta and (" · " .. row.eta) or "")
  elseif row.state == "error" then
    return "failed: " .. row.message .. (row.code and (" (" .. row.code .. ")") or "")
  end
  return row.state
end

-- s cut to n characters in the middle ("start...end"): a path keeps its file name, a message
-- its end. Counted in UTF-8 characters (a name's accented letter is not cut in two); bytes
-- when s is not UTF-8.
function rows.elide(s, n)
  n = math.floor(n)
  local len = utf8.len(s)
  local function at(i) -- the byte where character i starts
    if not len then return i end
    return utf8.offset(s, i) or #s + 1
  end
  len = len or #s
  if len <= n then return s end
  if n <= 3 then return s:sub(1, at(n + 1) - 1) end
  local tail = (n - 3) // 2
  return s:sub(1, at(n - 3 - tail + 1) - 1) .. "..." .. s:sub(at(len - tail + 1))
end

-- A job in at most n characters, the most telling first: "this project · " for this project's
-- jobs, the prompt, then the source file's full path where it fits, else its base name (elided
-- in the middle when even that is too long).
function rows.job_label(row, n)
  local head = (row.mine and "this project · " or "") .. row.prompt .. ": "
  local full = head .. row.source
  if #full <= n then return full end
  local name = row.source:match("([^/\\]+)$") or row.source
  local room = math.floor(n) - (utf8.len(head) or #head)
  if room >= 12 then return head .. rows.elide(name, room) end -- the marker and prompt whole
  return rows.elide(head .. name, n)
end

-- The buttons a row offers.
function rows.row_actions(row)
  local out = {}
  if row.state == "queued" or row.state == "running" then out[#out + 1] = { "Cancel", "cancel" } end
  if row.state == "done" and row.mine then out[#out + 1] = { "Import again", "import" } end
  if row.out ~= "" then out[#out + 1] = { "Folder", "folder" } end
  return out
end

return rows
