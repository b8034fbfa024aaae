-- @noindex
-- Progress display that never blocks: a ReaImGui window when ReaImGui is installed, else a gfx
-- window, else lines in the ReaScript console. view:update(rows, footer) draws one frame and
-- returns "cancel" when the user pressed Esc, the Cancel button or closed the window.
-- rows: { { text = "...", fraction = 0..1 | nil, state = "..." }, ... }
local reaper = reaper
local gfx = gfx
local settings = require("settings")
local reaimgui = require("reaimgui")

local ui = {}

local function has_imgui()
  return reaimgui.available()
end

function ui.kind()
  local want = settings.get("ui")
  if want == "imgui" and has_imgui() then return "imgui" end
  if want == "gfx" and gfx and gfx.init then return "gfx" end
  if want == "console" then return "console" end
  if want == "auto" then
    if has_imgui() then return "imgui" end
    if gfx and gfx.init then return "gfx" end
  end
  return "console"
end

---------------------------------------------------------------------------------------------------
local ImView = {}
ImView.__index = ImView

function ImView:update(rows, footer)
  local ImGui = reaimgui.load()
  if not self.ctx then
    self.ctx = ImGui.CreateContext(self.title)
  end
  local ctx = self.ctx
  local result
  ImGui.SetNextWindowSize(ctx, 460, 60 + 46 * #rows, ImGui.Cond_FirstUseEver)
  local visible, open = ImGui.Begin(ctx, self.title, true)
  if visible then
    for _, row in ipairs(rows) do
      ImGui.Text(ctx, row.text)
      if row.fraction then
        ImGui.ProgressBar(ctx, row.fraction, -1, 0, row.state or "")
      elseif row.state then
        ImGui.Text(ctx, "  " .. row.state)
      end
    end
    if footer and footer ~= "" then ImGui.Text(ctx, footer) end
    if ImGui.Button(ctx, "Cancel (Esc)") then result = "cancel" end
    if ImGui.IsKeyPressed(ctx, ImGui.Key_Escape) then
      result = "cancel"
    end
    ImGui.End(ctx)
  end
  if open == false then result = "cancel" end
  return result
end

function ImView:close()
  -- ReaImGui frees a context that is not used during a defer cycle.
  self.ctx = nil
end

---------------------------------------------------------------------------------------------------
local GfxView = {}
GfxView.__index = GfxView

function GfxView:update(rows, footer)
  local h = 52 + 40 * #rows
  if not self.opened then
    local x, y = 200, 200
    if reaper.GetMousePosition then x, y = reaper.GetMousePosition() end
    gfx.init(self.title, 460, h, 0, x, y)
    gfx.setfont(1, "Arial", 15)
    self.opened = true
    self.height = h
  end
  gfx.set(0.13, 0.13, 0.14, 1)
  gfx.rect(0, 0, gfx.w, gfx.h, 1)
  local y = 8
  for _, row in ipairs(rows) do
    gfx.set(0.9, 0.9, 0.9, 1)
    gfx.x, gfx.y = 10, y
    gfx.drawstr(row.text)
    y = y + 18
    if row.fraction then
      gfx.set(0.3, 0.3, 0.32, 1)
      gfx.rect(10, y, 440, 12, 1)
      gfx.set(0.35, 0.65, 0.95, 1)
      gfx.rect(10, y, math.floor(440 * math.max(0, math.min(1, row.fraction))), 12, 1)
    end
    gfx.set(0.75, 0.75, 0.75, 1)
    gfx.x, gfx.y = 12, y
    gfx.drawstr(row.state or "")
    y = y + 22
  end
  gfx.set(0.7, 0.7, 0.7, 1)
  gfx.x, gfx.y = 10, y + 4
  gfx.drawstr((footer and footer ~= "" and (footer .. "   ") or "") .. "Esc: cancel")
  gfx.update()
  local c = gfx.getchar()
  if c == 27 or c < 0 then return "cancel" end
  return nil
end

function GfxView:close()
  if self.opened then gfx.quit() end
  self.opened = false
end

---------------------------------------------------------------------------------------------------
local ConsoleView = {}
ConsoleView.__index = ConsoleView

function ConsoleView:update(rows)
  local now = reaper.time_precise()
  local lines = {}
  for _, row in ipairs(rows) do
    local pct = row.fraction and string.format(" %3d%%", math.floor(row.fraction * 100 + 0.5)) or ""
    lines[#lines + 1] = "ReaSAM: " .. row.text .. " - " .. (row.state or "") .. pct
  end
  local text = table.concat(lines, "\n")
  -- New states right away, percentage updates at most every 2 s.
  local states = {}
  for _, row in ipairs(rows) do states[#states + 1] = row.state or "" end
  local key = table.concat(states, "|")
  if key ~= self.last_key or (text ~= self.last_text and now - (self.last_time or 0) > 2) then
    reaper.ShowConsoleMsg(text .. "\n")
    self.last_key, self.last_text, self.last_time = key, text, now
  end
  return nil
end

function ConsoleView:close() end

---------------------------------------------------------------------------------------------------

function ui.open(title, kind)
  kind = kind or ui.kind()
  local cls = ({ imgui = ImView, gfx = GfxView, console = ConsoleView })[kind]
  return setmetatable({ title = title, kind = kind }, cls)
end

return ui
