-- Shared set-up for the specs: paths, a fresh REAPER model, temporary folders.
local model_mod = require("reaper_model")

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

local made = {}

-- A fresh folder under /tmp, removed by H.cleanup() (unless REASAM_KEEP_TMP is set).
function H.tmpdir(tag)
  local p = os.tmpname()
  os.remove(p)
  p = p .. "-" .. (tag or "reasam")
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
  if p and p:match("^/tmp/") then os.execute("rm -rf '" .. p .. "'") end
end

function H.model(opts)
  opts = opts or {}
  opts.resource = opts.resource or H.tmpdir("res")
  return model_mod.new(opts)
end

-- A model plus the lib modules loaded into one script environment.
function H.lib(model, name)
  model._lib_env = model._lib_env or model.lib_env(H.LIB)
  return model._lib_env.require(name)
end

return H
