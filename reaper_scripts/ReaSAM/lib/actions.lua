-- @noindex
-- What each action file does; the action files themselves only locate lib/ and call one of these.
local reaper = reaper
local gfx = gfx
local util = require("util")
local settings = require("settings")
local selection = require("selection")
local runner = require("runner")
local transport = require("transport")
local daemon = require("daemon")
local json = require("json")
local stems = require("stems")

local actions = {}

local TITLE = "ReaSAM"

local function message(text, kind)
  return reaper.ShowMessageBox(text, TITLE, kind or 0)
end

-- Collects the selection; shows why when nothing can be sent. Returns requests, notes or nil.
local function gather(opts)
  if reaper.CountSelectedMediaItems(0) == 0 then
    message("Select one or more audio items first.")
    return nil
  end
  local requests, notes = selection.collect(opts)
  if #requests == 0 then
    message("Nothing to separate:\n\n" .. table.concat(notes, "\n"))
    return nil
  end
  return requests, notes
end

-- The region to separate: each item, or (setting `region`, or the time-selection actions) only
-- its part inside the time selection. Returns opts, or nil after saying why (no time selection).
local function limit_opts(opts, region)
  opts = opts or {}
  if (region or settings.region()) == "time_selection" then
    local a, b = selection.time_selection()
    if not a then
      message("Make a time selection first: only the part of each selected item inside it is separated"
        .. (region and "." or " (the setting 'Region' is time_selection)."))
      return nil
    end
    opts.limit = { a, b }
  end
  return opts
end

local function gather_region(region)
  if reaper.CountSelectedMediaItems(0) == 0 then
    message("Select one or more audio items first.")
    return nil
  end
  local opts = limit_opts(nil, region)
  if not opts then return nil end
  return gather(opts)
end

-- One undo point for the whole run, however many items.
function actions.run(prompt_text, prompt_name, requests, notes, title)
  local run = runner.new({
    title = title or ("Separate " .. prompt_name),
    prompt_text = prompt_text,
    prompt_name = prompt_name,
    requests = requests,
    notes = notes,
  })
  return run:start()
end

-- "Separate selection - vocals/drums/bass/instrumental"; region "time_selection": "Separate time
-- selection - vocals" (only the part of each item inside the time selection, whatever the setting).
function actions.separate(prompt, region)
  local requests, notes = gather_region(region)
  if not requests then return nil end
  return actions.run(prompt, prompt, requests, notes)
end

-- A stem set: one job per item with every prompt, imported into a folder of coloured tracks
-- (one per prompt, then the rest) in one undo point.
function actions.run_set(prompts, requests, notes)
  local name = table.concat(prompts, ", ") .. ", rest"
  local run = runner.new({
    title = "Separate " .. name,
    prompt_text = prompts[1],
    prompt_name = name,
    prompts = prompts,
    requests = requests,
    notes = notes,
  })
  return run:start()
end

-- "Separate selection - vocals, drums, bass, rest" and other ready-made sets.
function actions.stem_set(prompts)
  local requests, notes = gather_region()
  if not requests then return nil end
  return actions.run_set(prompts, requests, notes)
end

-- "Separate selection - stems...": asks which stems (remembering the last choice), then runs
-- the set. With ReaImGui the checklist is a window answered in later defer ticks.
function actions.stems()
  if reaper.CountSelectedMediaItems(0) == 0 then
    message("Select one or more audio items first.")
    return nil
  end
  stems.ask(function(prompts)
    if prompts == nil then return end
    if #prompts == 0 then
      message("Tick at least one stem, or type one under 'also'.")
      return
    end
    local requests, notes = gather_region()
    if not requests then return end
    if #prompts == 1 then
      actions.run(prompts[1], prompts[1], requests, notes)
    else
      actions.run_set(prompts, requests, notes)
    end
  end)
end

-- Asks which recent prompt (or a new one) through a popup menu when there are recent prompts.
local function pick_recent(recent)
  if #recent == 0 or not (gfx and gfx.showmenu) then return "" end
  local items = { "New prompt..." }
  for _, p in ipairs(recent) do
    -- Menu syntax: | separates, a leading ! # > < has meaning; keep the text plain.
    items[#items + 1] = (p:gsub("|", "/"):gsub("^[!#<>]", " %0"))
  end
  local x, y = 200, 200
  if reaper.GetMousePosition then x, y = reaper.GetMousePosition() end
  gfx.init("ReaSAM prompt", 0, 0, 0, x, y)
  gfx.x, gfx.y = 0, 0
  local choice = gfx.showmenu(table.concat(items, "|"))
  gfx.quit()
  if choice == 0 then return nil end
  if choice == 1 then return "" end
  return recent[choice - 1]
end

-- "Separate selection - custom prompt".
function actions.custom()
  if reaper.CountSelectedMediaItems(0) == 0 then
    message("Select one or more audio items first.")
    return nil
  end
  local recent = settings.recent_prompts()
  local prompt = pick_recent(recent)
  if prompt == nil then return nil end
  if prompt == "" then
    local ok, text = reaper.GetUserInputs("ReaSAM: separate by prompt", 1,
      "What to isolate (e.g. a dog barking):,extrawidth=260", recent[1] or "")
    if not ok then return nil end
    prompt = util.trim(text)
  end
  if prompt == "" then
    message("Type what to isolate, e.g. 'vocals', 'snare drum' or 'a dog barking'.")
    return nil
  end
  settings.remember_prompt(prompt)
  local requests, notes = gather_region()
  if not requests then return nil end
  return actions.run(prompt, prompt, requests, notes)
end

-- "Separate selection - sound in time selection": the time selection is a + span.
function actions.span()
  if reaper.CountSelectedMediaItems(0) == 0 then
    message("Select one or more audio items first.")
    return nil
  end
  local a, b = selection.time_selection()
  if not a then
    message("Make a time selection over the sound you want to isolate (where it plays), then run this again.")
    return nil
  end
  local ok, text = reaper.GetUserInputs("ReaSAM: sound in time selection", 1,
    "Describe it (optional):,extrawidth=220", "")
  if not ok then return nil end
  text = util.trim(text)
  local requests, notes = gather({ span_project = { a, b } })
  if not requests then return nil end
  if text ~= "" then settings.remember_prompt(text) end
  local name = text ~= "" and text or "time selection sound"
  return actions.run(text, name, requests, notes, "Separate the sound in the time selection")
end

-- "ReaSAM - cancel jobs": cancels every job in flight, from any ReaSAM action.
function actions.cancel()
  local jobs = runner.active_jobs()
  runner.signal_cancel()
  if #jobs == 0 then
    reaper.ShowConsoleMsg("ReaSAM: no jobs to cancel\n")
    return 0
  end
  local t = transport.open()
  if t then
    for _, job in ipairs(jobs) do t:cancel(job.id) end
    t:close()
  end
  reaper.ShowConsoleMsg(string.format("ReaSAM: cancelling %d job(s)\n", #jobs))
  return #jobs
end

---------------------------------------------------------------------------------------------------
-- "ReaSAM - status and settings"

local function settings_dialog()
  local names = settings.EDITABLE
  local captions, values = {}, {}
  for i, name in ipairs(names) do
    captions[i] = settings.SPEC[name][4]
    values[i] = settings.format(name, settings.get(name))
  end
  local ok, csv = reaper.GetUserInputs("ReaSAM settings", #names,
    table.concat(captions, ",") .. ",extrawidth=240,separator=\n", table.concat(values, "\n"))
  if not ok then return false end
  local got = util.split(csv, "\n")
  local errors = {}
  for i, name in ipairs(names) do
    local okset, err = settings.set(name, got[i] or "")
    if not okset then errors[#errors + 1] = err end
  end
  if #errors > 0 then
    message("Some settings were not saved:\n\n" .. table.concat(errors, "\n"))
    return false
  end
  return true
end

actions.settings_dialog = settings_dialog

local function status_text(pong, status_json, t)
  local lines = {}
  if pong then
    if pong.version then
      lines[#lines + 1] = string.format("Daemon: running, version %s", tostring(pong.version))
      lines[#lines + 1] = "Engines: " .. tostring(pong.engines)
      lines[#lines + 1] = "Device: " .. tostring(pong.device) .. "   model: " .. tostring(pong.model_state)
    else
      lines[#lines + 1] = "Daemon: running"
      if pong.raw and pong.raw ~= "" then lines[#lines + 1] = util.trim(pong.raw) end
    end
  else
    lines[#lines + 1] = "Daemon: not answering"
  end
  lines[#lines + 1] = string.format("Address: %s:%d (%s)", settings.get("host"), settings.get("port"),
    t and (t.kind == "udp" and "OSC over UDP" or "reasam command, no sockets") or "no transport")
  local st = status_json and json.decode(status_json)
  if type(st) == "table" then
    -- /reasam/status without a job id: running ids, queued count, journal counts per state.
    local running = type(st.running) == "table" and #st.running or 0
    local parts = { string.format("%d running, %s queued", running, tostring(tonumber(st.queued) or 0)) }
    if type(st.jobs) == "table" then
      local names = {}
      for k, v in pairs(st.jobs) do
        if type(v) == "number" then names[#names + 1] = k .. " " .. math.floor(v) end
      end
      table.sort(names)
      if #names > 0 then parts[#parts + 1] = "journal: " .. table.concat(names, ", ") end
    end
    lines[#lines + 1] = "Daemon jobs: " .. table.concat(parts, "; ")
  end
  local mine = runner.active_jobs()
  lines[#lines + 1] = string.format("Jobs from REAPER in flight: %d", #mine)
  lines[#lines + 1] = "Output folder: " .. settings.output_dir()
  lines[#lines + 1] = string.format("Engine: %s   quality: %s   folder: %s   mute original: %s",
    settings.get("engine"), settings.get("quality"), settings.get("folder") and "yes" or "no",
    settings.get("mute_original") and "yes" or "no")
  lines[#lines + 1] = string.format("Stems go to: %s   separating again: %s   region: %s",
    settings.get("place"), settings.get("on_repeat"), settings.region())
  lines[#lines + 1] = "Token file: " .. settings.token_path()
  lines[#lines + 1] = "Daemon log (when started by ReaSAM): " .. daemon.log_path()
  return table.concat(lines, "\n")
end

-- Pings (without starting anything), asks the daemon's job list, then shows it and offers the
-- settings dialog. Waits in a defer loop.
function actions.status()
  local t = transport.open()
  local conn = t and daemon.connector(t, { start = false })
  local t0 = reaper.time_precise()
  local pong, status_json, asked
  local function finish()
    if t then t:close() end
    local text = status_text(pong, status_json, t)
    local answer = message(text .. "\n\nChange settings?", 4)
    if answer == 6 then settings_dialog() end
  end
  local function tick()
    local now = reaper.time_precise()
    if t then
      for _, ev in ipairs(t:poll()) do
        conn:on_event(ev)
        if ev.type == "status" then status_json = ev.json end
      end
      local state = conn:step(now)
      if state == "ready" then
        pong = conn.info
        if not asked then
          asked = now
          t:status()
        end
      end
      local waited_status = asked and (status_json or now - asked > (t.kind == "udp" and 1.0 or 15))
      if state == "failed" or waited_status or now - t0 > 25 then
        finish()
        return
      end
    else
      finish()
      return
    end
    reaper.defer(tick)
  end
  tick()
end

return actions
