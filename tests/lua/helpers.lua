-- Shared set-up for the specs: paths, a fresh REAPER model, temporary folders, the environment
-- of the processes the specs start, and encoders only the specs need.
local model_mod = require("reaper_model")
local luassert = require("luassert")

local H = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source:match("^@(.*)$")
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD") or io.popen("pwd"):read("l")
    dir = pwd .. "/" .. dir
  end
  return dir
end

H.TESTS = script_dir()
H.REPO = H.TESTS:gsub("/tests/lua$", "")
H.SCRIPTS = H.REPO .. "/reaper_scripts/ReaSAM"
H.LIB = H.SCRIPTS .. "/lib"

function H.action(name)
  return H.SCRIPTS .. "/" .. name .. ".lua"
end

-- tests/test_lua.py gives each spec file its own temporary folder (and removes it, and ends
-- every process the spec started, afterwards); run by hand, folders go under /tmp.
local ROOT = os.getenv("REASAM_TEST_TMP")
if ROOT == "" then ROOT = nil end

local made = {}
local seq = 0

-- A fresh folder, removed by H.cleanup() (unless REASAM_KEEP_TMP is set).
function H.tmpdir(tag)
  local p
  if ROOT then
    seq = seq + 1
    p = string.format("%s/%s-%d-%06x", ROOT, tag or "reasam", seq, math.random(0, 0xFFFFFF))
  else
    p = os.tmpname()
    os.remove(p)
    p = p .. "-" .. (tag or "reasam")
  end
  os.execute("mkdir -p '" .. p .. "'")
  made[#made + 1] = p
  return p
end

function H.cleanup()
  if os.getenv("REASAM_KEEP_TMP") then return end
  for _, p in ipairs(made) do H.rmtree(p) end
  made = {}
end

function H.rmtree(p)
  if not p or p:find("'", 1, true) or p:find("/%.%./") then return end
  if p:match("^/tmp/.") or (ROOT and p:sub(1, #ROOT + 1) == ROOT .. "/") then os.execute("rm -rf '" .. p .. "'") end
end

-- Environment assignments (for `env`) that keep a reasam process away from the developer's own
-- configuration: an empty config file, a config folder of its own (token, config.toml).
function H.isolated_env(dir)
  os.execute("mkdir -p '" .. dir .. "/xdg'")
  local f = assert(io.open(dir .. "/empty-config.toml", "w"))
  f:close()
  return string.format("REASAM_CONFIG='%s/empty-config.toml' XDG_CONFIG_HOME='%s/xdg'", dir, dir)
end

-- A model whose ExecProcess runs commands in an isolated environment (opts.exec_env adds to it).
function H.model(opts)
  opts = opts or {}
  opts.resource = opts.resource or H.tmpdir("res")
  local iso = H.isolated_env(H.tmpdir("env"))
  opts.exec_env = opts.exec_env and (iso .. " " .. opts.exec_env) or iso
  return model_mod.new(opts)
end

-- A model plus the lib modules loaded into one script environment.
function H.lib(model, name)
  model._lib_env = model._lib_env or model.lib_env(H.LIB)
  return model._lib_env.require(name)
end

-- Compact JSON, keys sorted (the scripts only decode JSON).
function H.json_encode(v)
  local t = type(v)
  if v == nil then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      local map = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
      return map[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  if t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = H.json_encode(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = H.json_encode(k) .. ":" .. H.json_encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot encode a " .. t .. " as JSON")
end

-- An OSC bundle of already-encoded elements (messages or bundles); the daemon may send them.
function H.osc_bundle(elements, timetag)
  local function osc_string(s) return s .. string.rep("\0", 4 - #s % 4) end
  local sec, frac = 0, 1 -- "immediately"
  if timetag then sec, frac = timetag[1], timetag[2] end
  local parts = { osc_string("#bundle"), string.pack(">I4I4", sec, frac) }
  for _, e in ipairs(elements) do parts[#parts + 1] = string.pack(">i4", #e) .. e end
  return table.concat(parts)
end

-- REAPER's UI must never wait on a ReaSAM tick. What would make it wait is counted, not timed (a
-- busy machine must not fail a spec): no blocking call at all (os.execute, io.popen, ExecProcess
-- with a timeout, a socket receive that may wait, socket.sleep: reaper_model.lua records them),
-- and a bounded amount of work per tick: a tick reads a status or manifest JSON (about 2 KB),
-- never audio. CPU time only as a "does not hang" bound: a tick takes about 5 ms.
H.MAX_TICK_BYTES = 64 * 1024
H.MAX_TICK_CPU = 2.0

-- What every integration spec checks after an action ran in `model`: no script error, no blocking
-- call, balanced UI refresh and undo, bounded work per tick, ExecProcess only without waiting, and
-- no API outside what the model knows. `max_items`: the most items one tick may add (nil: any).
function H.assert_healthy(model, max_items)
  luassert.are.same({}, model.errors)
  luassert.are.same({}, model.blocking_calls)
  luassert.are.same({}, model.refresh_violations)
  luassert.are.equal(0, model.undo_depth)
  luassert.is_true(model.max_tick_bytes <= H.MAX_TICK_BYTES, ("a tick read %d bytes"):format(model.max_tick_bytes))
  if max_items then
    luassert.is_true(model.max_tick_items <= max_items, ("a tick added %d items"):format(model.max_tick_items))
  end
  luassert.is_true(model.max_tick < H.MAX_TICK_CPU, ("a tick took %.3f s of CPU time"):format(model.max_tick))
  for _, e in ipairs(model.exec) do
    luassert.are.equal(-1, e.timeout, "a blocking ExecProcess: " .. e.cmd)
  end
  for name in pairs(model.missing) do
    luassert.is_true(model_mod.OPTIONAL[name] == true, "the scripts used an unknown API: " .. name)
  end
end

-- Runs an action file in `model` to its end (at most `timeout` seconds, default 90) and checks it
-- ended cleanly: no script error, not still running, undo and UI refresh balanced, no API outside
-- what the model knows. Returns the script.
function H.run_action(model, action, timeout)
  local script = model.run_action(H.action(action))
  model.run_until(function() return not model.running() end, timeout or 90)
  luassert.are.same({}, model.errors)
  luassert.is_false(model.running(), "the action is still running")
  luassert.are.equal(0, model.undo_depth)
  luassert.are.same({}, model.refresh_violations)
  for name in pairs(model.missing) do
    luassert.is_true(model_mod.OPTIONAL[name] == true, "the scripts used an unknown API: " .. name)
  end
  return script
end

-- The id of the first job the running actions track (their "active_jobs" ext state), or nil.
function H.first_job(model)
  return model.reaper.GetExtState("ReaSAM", "active_jobs"):match("^([^\t]+)")
end

-- A job's state in the daemon's record (its status.json under the output folder `out`), or nil
-- before there is one.
function H.job_state(out, job)
  local f = io.open(out .. "/" .. job .. "/status.json")
  local st = f and f:read("a") or ""
  if f then f:close() end
  return st:match('"state": *"(%a+)"')
end

-- Ends every script still running in `model` (the integration specs' after_each).
function H.end_scripts(model)
  if not model then return end
  for _, s in ipairs(model.scripts) do
    if s.alive then model.terminate(s) end
  end
end

return H
