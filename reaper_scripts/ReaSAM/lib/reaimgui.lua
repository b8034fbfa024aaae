-- @noindex
-- ReaImGui with its API version pinned, loaded the way ReaImGui documents it (shims/imgui.lua):
--   package.path = reaper.ImGui_GetBuiltinPath() .. '/?.lua'
--   local ImGui = require 'imgui' '0.9'
-- A newer ReaImGui keeps answering the 0.9 API through its shims, so the windows keep working
-- when it is updated. Functions come without the ImGui_ prefix; enums are values (ImGui.Key_Escape).
local reaper = reaper

local reaimgui = {}

reaimgui.API_VERSION = "0.9"

local loaded, why

-- The pinned ImGui table, or nil and why not (ReaImGui missing or older than the pinned API).
function reaimgui.load()
  if loaded or why then return loaded, why end
  if not reaper.ImGui_GetBuiltinPath then
    why = "ReaImGui is not installed (ReaPack: 'ReaImGui: ReaScript binding for Dear ImGui')"
    return nil, why
  end
  local entry = reaper.ImGui_GetBuiltinPath() .. "/?.lua"
  if not package.path:find(entry, 1, true) then package.path = entry .. ";" .. package.path end
  local ok, lib = pcall(require, "imgui")
  if ok then ok, lib = pcall(lib, reaimgui.API_VERSION) end
  if not ok then
    why = "ReaImGui does not offer API " .. reaimgui.API_VERSION .. ": " .. tostring(lib)
    return nil, why
  end
  loaded = lib
  return loaded
end

function reaimgui.available()
  return reaimgui.load() ~= nil
end

return reaimgui
