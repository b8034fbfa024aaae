-- @noindex
-- Settings in REAPER's ExtState (section "ReaSAM", persisted in reaper-extstate.ini).
-- Every key has a default and a type; get() never returns an invalid value.
local reaper = reaper
local util = require("util")

local settings = {}

settings.SECTION = "ReaSAM"
settings.DEFAULT_PORT = 9797 -- the daemon's default (reasam/config.py)

local ENGINES = { auto = true, sam = true, spleeter = true, dsp = true }
local QUALITIES = { fast = true, balanced = true, best = true }
local TRANSPORTS = { auto = true, udp = true, cli = true }
local UIS = { auto = true, imgui = true, gfx = true, console = true }
local PLACES = { tracks = true, takes = true, target_takes = true }
local ACTIVE_TAKES = { target = true, original = true }
local REPEATS = { replace = true, keep = true }
local REGIONS = { item = true, time_selection = true }

-- name -> { kind, default, validator/choices, label }
settings.SPEC = {
  host = { "string", "127.0.0.1", nil, "Daemon host" },
  port = { "int", settings.DEFAULT_PORT, { 1, 65535 }, "Daemon port" },
  out_dir = { "string", "", nil, "Output folder (empty: <project media>/ReaSAM)" },
  engine = { "choice", "auto", ENGINES, "Engine (auto/sam/spleeter/dsp)" },
  quality = { "choice", "balanced", QUALITIES, "Quality (fast/balanced/best)" },
  folder = { "bool", false, nil, "Put new tracks in a folder (y/n)" },
  mute_original = { "bool", true, nil, "Mute the original item (y/n)" },
  target_name = { "string", "{prompt}", nil, "Target track name ({prompt})" },
  residual_name = { "string", "{prompt} residual", nil, "Residual track name ({prompt})" },
  transport = { "choice", "auto", TRANSPORTS, "Transport (auto/udp/cli)" },
  ui = { "choice", "auto", UIS, "Progress window (auto/imgui/gfx/console)" },
  reasam_command = { "string", "", nil, "reasam command (empty: search)" },
  token_file = { "string", "", nil, "Token file (empty: default)" },
  start_daemon = { "bool", true, nil, "Start the daemon when it is not running (y/n)" },
  start_timeout = { "number", 60, { 1, 3600 }, "Seconds to wait for a starting daemon" },
  peaks = { "bool", true, nil, "Build peaks after import (y/n)" },
  import_absent = { "bool", false, nil, "Import stems where nothing was found (y/n)" },
  stem_colors = { "string", "", nil, "Stem colours (name=#RRGGBB; ...)" },
  -- Where stems go. Takes: new takes in the original item, lined up like the tracks, the target
  -- then the residual or rest (target_takes: the targets only); the target take becomes the
  -- active one (the action's point is to hear what was isolated; the original is one take
  -- switch away, as the muted original is with tracks).
  place = { "choice", "tracks", PLACES, "Stems go to (tracks/takes/target_takes)" },
  active_take = { "choice", "target", ACTIVE_TAKES, "Takes: active take (target/original)" },
  -- Separating an item again with the same prompts: replace the stems ReaSAM made for it (one
  -- undo point), or keep both.
  on_repeat = { "choice", "replace", REPEATS, "Separating again (replace/keep)" },
  -- What part of each selected item is separated: all of it, or what lies in the time selection.
  region = { "choice", "item", REGIONS, "Region (item/time_selection)" },
}

-- The order shown in the settings dialog.
settings.EDITABLE = {
  "port", "out_dir", "engine", "quality", "folder", "mute_original", "region",
  "target_name", "residual_name", "transport", "reasam_command", "import_absent", "stem_colors",
  "place", "active_take", "on_repeat",
}

local function parse(name, text)
  local spec = settings.SPEC[name]
  if not spec then return nil, "unknown setting " .. tostring(name) end
  local kind, _, rule, label = spec[1], spec[2], spec[3], spec[4]
  text = util.trim(text)
  if kind == "string" then
    return text
  elseif kind == "bool" then
    local t = text:lower()
    if t == "1" or t == "y" or t == "yes" or t == "true" or t == "on" then return true end
    if t == "0" or t == "n" or t == "no" or t == "false" or t == "off" then return false end
    return nil, label .. ": answer y or n, not '" .. text .. "'"
  elseif kind == "int" or kind == "number" then
    local v = tonumber(text)
    if v == nil then return nil, label .. ": not a number: '" .. text .. "'" end
    if kind == "int" then
      v = math.tointeger(v)
      if v == nil then return nil, label .. ": not a whole number: '" .. text .. "'" end
    end
    if rule and (v < rule[1] or v > rule[2]) then
      return nil, string.format("%s: must be between %s and %s", label, rule[1], rule[2])
    end
    return v
  elseif kind == "choice" then
    local t = text:lower()
    if rule[t] then return t end
    local names = {}
    for k in pairs(rule) do names[#names + 1] = k end
    table.sort(names)
    return nil, label .. ": one of " .. table.concat(names, ", ") .. ", not '" .. text .. "'"
  end
end

local function format(name, value)
  local kind = settings.SPEC[name][1]
  if kind == "bool" then return value and "y" or "n" end
  if kind == "number" then return util.num(value) end
  return tostring(value)
end
settings.format = format

function settings.get(name)
  local spec = settings.SPEC[name]
  assert(spec, "unknown setting " .. tostring(name))
  if reaper.HasExtState(settings.SECTION, name) then
    local v = parse(name, reaper.GetExtState(settings.SECTION, name))
    if v ~= nil then return v end
  end
  return spec[2]
end

-- Stores a value given as text or typed; returns true or nil, message.
function settings.set(name, value)
  local v, err
  if type(value) == "string" then
    v, err = parse(name, value)
  else
    v, err = parse(name, format(name, value))
  end
  if v == nil then return nil, err end
  reaper.SetExtState(settings.SECTION, name, format(name, v), true)
  return true
end

-- The token file the daemon writes on first start (protocol: mode 0600, owner only); the same
-- places as reasam/config.py config_dir().
function settings.token_path()
  local v = settings.get("token_file")
  if v ~= "" then return util.expand_user(v) end
  if util.is_windows() then
    local appdata = os.getenv("APPDATA") or util.join(util.home(), "AppData", "Roaming")
    return util.join(appdata, "ReaSAM", "token")
  end
  local os_name = reaper.GetOS and reaper.GetOS() or ""
  if os_name:match("^OSX") or os_name:match("^macOS") then
    return util.join(util.home(), "Library", "Application Support", "ReaSAM", "token")
  end
  local xdg = os.getenv("XDG_CONFIG_HOME")
  if xdg and xdg ~= "" then return util.join(xdg, "reasam", "token") end
  return util.join(util.home(), ".config", "reasam", "token")
end

function settings.read_token()
  local data = util.read_file(settings.token_path())
  if not data then return nil end
  local token = util.trim(data:match("^[^\r\n]*") or "")
  if token == "" then return nil end
  return token
end

-- Where stems go: the setting, else <project media folder>/ReaSAM, else beside the project file.
function settings.output_dir()
  local v = settings.get("out_dir")
  if v ~= "" then return util.expand_user(v) end
  local media = reaper.GetProjectPath and reaper.GetProjectPath("") or ""
  if media ~= "" then return util.join(media, "ReaSAM") end
  local _, projfn = reaper.EnumProjects(-1, "")
  if projfn and projfn ~= "" then return util.join(util.dirname(projfn), "ReaSAM") end
  return util.join(reaper.GetResourcePath(), "ReaSAM")
end

-- Candidate `reasam` executables, most specific first.
function settings.reasam_candidates()
  local v = settings.get("reasam_command")
  if v ~= "" then return { util.expand_user(v) } end
  local home = util.home()
  if util.is_windows() then
    local local_app = os.getenv("LOCALAPPDATA") or util.join(home, "AppData", "Local")
    return {
      util.join(local_app, "reasam", "venv", "Scripts", "reasam.exe"),
      util.join(home, ".local", "bin", "reasam.exe"),
      "reasam",
    }
  end
  return {
    util.join(home, ".local", "share", "reasam", "venv", "bin", "reasam"),
    util.join(home, ".local", "bin", "reasam"),
    "/opt/homebrew/bin/reasam",
    "/usr/local/bin/reasam",
    "reasam",
  }
end

function settings.reasam_command()
  local v = settings.get("reasam_command")
  if v ~= "" then return util.expand_user(v) end -- what the user set, even if it is wrong
  -- `reasam install-reaper` records the command it was run as.
  local recorded = util.read_file(util.join(reaper.GetResourcePath(), "ReaSAM", "reasam-command.txt"))
  recorded = recorded and util.trim(recorded:match("^[^\r\n]*") or "")
  if recorded and recorded ~= "" and (not util.is_absolute(recorded) or util.file_exists(recorded)) then
    return recorded
  end
  for _, c in ipairs(settings.reasam_candidates()) do
    if not util.is_absolute(c) or util.file_exists(c) then return c end
  end
  return "reasam"
end

-- Most-recently-used prompts, newest first.
local MAX_RECENT = 10
function settings.recent_prompts()
  local raw = reaper.GetExtState(settings.SECTION, "recent_prompts")
  local out = {}
  for _, p in ipairs(util.split(raw, ";")) do
    if p ~= "" then out[#out + 1] = util.unescape(p) end
  end
  return out
end

function settings.remember_prompt(prompt)
  prompt = util.trim(prompt)
  if prompt == "" then return end
  local list = { prompt }
  for _, p in ipairs(settings.recent_prompts()) do
    if p ~= prompt and #list < MAX_RECENT then list[#list + 1] = p end
  end
  local enc = {}
  for i, p in ipairs(list) do enc[i] = util.escape(p) end
  reaper.SetExtState(settings.SECTION, "recent_prompts", table.concat(enc, ";"), true)
end

-- The stems last ticked in "Separate selection: stems..." (none before the first use).
function settings.last_stems()
  local out = {}
  for _, p in ipairs(util.split(reaper.GetExtState(settings.SECTION, "last_stems"), ";")) do
    if p ~= "" then out[#out + 1] = util.unescape(p) end
  end
  return out
end

function settings.remember_stems(list)
  local enc = {}
  for i, p in ipairs(list) do enc[i] = util.escape(p) end
  reaper.SetExtState(settings.SECTION, "last_stems", table.concat(enc, ";"), true)
end

-- The region setting; a setting stored before it existed may say limit_to_time_selection=y.
function settings.region()
  if not reaper.HasExtState(settings.SECTION, "region")
    and reaper.GetExtState(settings.SECTION, "limit_to_time_selection") == "y" then
    return "time_selection"
  end
  return settings.get("region")
end

function settings.track_name(which, prompt)
  local pattern = settings.get(which == "residual" and "residual_name" or "target_name")
  if pattern == "" then pattern = which == "residual" and "{prompt} residual" or "{prompt}" end
  return (pattern:gsub("{prompt}", function() return prompt end))
end

return settings
