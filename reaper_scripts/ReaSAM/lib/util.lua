-- @noindex
-- Small helpers shared by the ReaSAM modules: paths, files, quoting, numbers.
-- Nothing here touches the project; everything is local to this module table.
local reaper = reaper

local util = {}

function util.is_windows()
  local os_name = reaper and reaper.GetOS and reaper.GetOS() or ""
  if os_name ~= "" then return os_name:match("^Win") ~= nil end
  return package.config:sub(1, 1) == "\\"
end

function util.sep()
  return util.is_windows() and "\\" or "/"
end

function util.join(...)
  local parts = { ... }
  local out = ""
  for _, p in ipairs(parts) do
    if p ~= nil and p ~= "" then
      if out == "" or out:match("[/\\]$") then
        out = out .. p
      else
        out = out .. util.sep() .. p
      end
    end
  end
  return out
end

function util.dirname(path)
  return (path:match("^(.*)[/\\][^/\\]*$")) or ""
end

function util.is_absolute(path)
  return path:match("^/") ~= nil or path:match("^%a:[/\\]") ~= nil or path:match("^\\\\") ~= nil
end

function util.home()
  return os.getenv("HOME") or os.getenv("USERPROFILE") or ""
end

function util.expand_user(path)
  if path:sub(1, 1) == "~" then return util.home() .. path:sub(2) end
  return path
end

function util.file_exists(path)
  if not path or path == "" then return false end
  if reaper and reaper.file_exists then return reaper.file_exists(path) end
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- Reads a whole file; nil, message when it cannot.
function util.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("a")
  f:close()
  return data
end

function util.write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(data)
  f:close()
  return true
end

function util.mkdirs(path)
  if reaper and reaper.RecursiveCreateDirectory then
    reaper.RecursiveCreateDirectory(path, 0)
    return true
  end
  return false
end

function util.trim(s)
  return (tostring(s or ""):gsub("^%s+", ""):gsub("%s+$", ""))
end

-- A number as text without a locale decimal comma and without needless zeros.
function util.num(x)
  local s = string.format("%.6f", x)
  s = s:gsub("0+$", ""):gsub("%.$", "")
  if s == "-0" then s = "0" end
  return s
end

-- mm:ss.t for people.
function util.clock(seconds)
  seconds = math.max(0, seconds or 0)
  local m = math.floor(seconds / 60)
  return string.format("%d:%04.1f", m, seconds - 60 * m)
end

-- Quotes one argument for /bin/sh.
function util.sh_quote(s)
  s = tostring(s)
  if s:match("^[%w%._/:=+,@%-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Quotes one argument for a line of a .cmd script run by cmd.exe: the program splits its command
-- line by CommandLineToArgvW's rules (double quotes, backslashes doubled before a closing quote),
-- and cmd's batch parser expands %VAR% even inside quotes, so % is doubled. cmd cannot pass a
-- double quote inside a quoted argument at all, nor a line break: those are refused with a
-- message (nil, message) instead of being passed on mangled.
function util.win_quote(s)
  s = tostring(s)
  if s:find('"', 1, true) then
    return nil, string.format("cannot pass %s to a command on Windows: cmd.exe has no way to quote a double "
      .. 'quote ("); remove it (or install "Mavriq Lua Sockets" from ReaPack, so ReaSAM sends requests '
      .. "over OSC instead of through the reasam command)", s)
  end
  if s:find("[\r\n\0]") then
    return nil, string.format("cannot pass %q to a command on Windows: it contains a line break", s)
  end
  local plain = s ~= "" and not s:find("[%s&|<>^%%(),;=!]")
  s = s:gsub("%%", "%%%%")
  if plain then return s end
  s = s:gsub("(\\+)$", "%1%1")
  return '"' .. s .. '"'
end

-- One argument quoted for the platform's script lines (sh or cmd); nil, message when it cannot be.
function util.quote(s)
  if util.is_windows() then return util.win_quote(s) end
  return util.sh_quote(s)
end

-- A command line from a list of arguments (program first); nil, message when one cannot be quoted.
function util.command_line(args)
  local out = {}
  for i, a in ipairs(args) do
    local q, err = util.quote(a)
    if not q then return nil, err end
    out[i] = q
  end
  return table.concat(out, " ")
end

-- A string literal for PowerShell (single quotes: nothing inside is expanded, ' is doubled).
function util.ps_quote(s)
  return "'" .. tostring(s):gsub("'", "''") .. "'"
end

-- Job ids: [A-Za-z0-9_.-]{1,64}, unique enough across REAPER sessions and machines.
local counter = 0
function util.new_id(prefix)
  counter = counter + 1
  local t = reaper and reaper.time_precise and reaper.time_precise() or os.clock()
  local rnd = math.random(0, 0xFFFFFF)
  local id = string.format("%s-%s-%06x-%d", prefix or "rs", os.date("%Y%m%d-%H%M%S"),
    (rnd + math.floor(t * 1000)) % 0x1000000, counter)
  return (id:gsub("[^%w_.%-]", "_")):sub(1, 64)
end

-- Folder/file-name-safe version of a prompt.
function util.slug(text, max_len)
  local s = tostring(text or ""):lower():gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", "")
  if s == "" then s = "sound" end
  return s:sub(1, max_len or 32)
end

-- Percent-encoding, used to keep lists in single-line ExtState values.
function util.escape(s)
  return (tostring(s):gsub("[%%;\r\n=|\t]", function(c) return string.format("%%%02X", c:byte()) end))
end

function util.unescape(s)
  return (tostring(s):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function util.split(s, sep)
  local out = {}
  if s == nil or s == "" then return out end
  local start = 1
  while true do
    local i, j = s:find(sep, start, true)
    if not i then
      out[#out + 1] = s:sub(start)
      break
    end
    out[#out + 1] = s:sub(start, i - 1)
    start = j + 1
  end
  return out
end

function util.now()
  if reaper and reaper.time_precise then return reaper.time_precise() end
  return os.clock()
end

return util
