-- @noindex
-- The job panel drawn with ReaImGui (API pinned by lib/reaimgui.lua): one frame per defer tick.
-- view:frame(panel) draws and returns the commands the user gave ({ "cancel", id }, ...).
-- Docking: ReaImGui docks by dragging the title bar; the Dock button puts the window in REAPER's
-- first docker (dock id -1) or floats it (0); the dock id is remembered between runs.
local reaper = reaper
local reaimgui = require("reaimgui")
local settings = require("settings")
local rows = require("panel_rows")

local View = {}
View.__index = View

local DOCK_KEY = "panel_dock"

local function new(title)
  return setmetatable({ title = title, ImGui = reaimgui.load() }, View)
end

function View:settings_section(ctx, cmds)
  local ImGui = self.ImGui
  if not ImGui.CollapsingHeader(ctx, "Settings") then return end
  for _, name in ipairs(settings.EDITABLE) do
    local spec = settings.SPEC[name]
    local label = spec[4] .. "##" .. name
    if spec[1] == "bool" then
      local changed, v = ImGui.Checkbox(ctx, label, settings.get(name))
      if changed then cmds[#cmds + 1] = { "setting", name, v } end
    else
      -- (ReaImGui keeps the text being edited itself; Enter hands it over)
      local changed, text = ImGui.InputText(ctx, label, settings.format(name, settings.get(name)),
        ImGui.InputTextFlags_EnterReturnsTrue)
      if changed then cmds[#cmds + 1] = { "setting", name, text } end
    end
  end
  ImGui.TextDisabled(ctx, "(text fields apply on Enter)")
end

function View:frame(p)
  local ImGui = self.ImGui
  if not self.ctx then
    self.ctx = ImGui.CreateContext(self.title)
    local dock = math.tointeger(tonumber(reaper.GetExtState(settings.SECTION, DOCK_KEY)) or 0) or 0
    if dock ~= 0 then ImGui.SetNextWindowDockID(self.ctx, dock) end
    ImGui.SetNextWindowSize(self.ctx, 640, 420, ImGui.Cond_FirstUseEver)
  end
  local ctx = self.ctx
  if self.dock_to then
    ImGui.SetNextWindowDockID(ctx, self.dock_to)
    self.dock_to = nil
  end
  local cmds = {}
  local visible, open = ImGui.Begin(ctx, self.title, true)
  if visible then
    local dock = ImGui.GetWindowDockID(ctx)
    if dock ~= self.dock then
      self.dock = dock
      reaper.SetExtState(settings.SECTION, DOCK_KEY, tostring(dock), true)
    end
    local d = p.daemon
    ImGui.Text(ctx, rows.daemon_line(d, settings.get("engine")))
    local model = rows.model_line(d)
    if model ~= "" then ImGui.TextWrapped(ctx, model) end
    if d.state == "running" then
      if ImGui.Button(ctx, "Stop daemon") then cmds[#cmds + 1] = { "stop" } end
    elseif d.state ~= "starting" and d.state ~= "stopping" then
      if ImGui.Button(ctx, "Start daemon") then cmds[#cmds + 1] = { "start" } end
    end
    ImGui.SameLine(ctx)
    if ImGui.Button(ctx, "Open log") then cmds[#cmds + 1] = { "log" } end
    ImGui.SameLine(ctx)
    if ImGui.Button(ctx, dock ~= 0 and "Undock" or "Dock") then self.dock_to = dock ~= 0 and 0 or -1 end
    if p.note ~= "" then ImGui.TextWrapped(ctx, p.note) end
    ImGui.Separator(ctx)
    if #p.rows == 0 then
      ImGui.TextDisabled(ctx, "No jobs yet.")
    elseif ImGui.BeginTable(ctx, "jobs", 4, ImGui.TableFlags_Borders | ImGui.TableFlags_RowBg
        | ImGui.TableFlags_Resizable) then
      ImGui.TableSetupColumn(ctx, "Job", ImGui.TableColumnFlags_WidthStretch)
      ImGui.TableSetupColumn(ctx, "State", ImGui.TableColumnFlags_WidthStretch)
      ImGui.TableSetupColumn(ctx, "From", ImGui.TableColumnFlags_WidthFixed)
      ImGui.TableSetupColumn(ctx, "", ImGui.TableColumnFlags_WidthFixed)
      ImGui.TableHeadersRow(ctx)
      for _, row in ipairs(p.rows) do
        ImGui.TableNextRow(ctx)
        ImGui.TableNextColumn(ctx)
        ImGui.Text(ctx, row.prompt .. ": " .. row.source)
        ImGui.TableNextColumn(ctx)
        if row.state == "running" or row.state == "queued" then
          ImGui.ProgressBar(ctx, row.fraction, -1, 0, rows.state_text(row))
        else
          ImGui.TextWrapped(ctx, rows.state_text(row))
        end
        ImGui.TableNextColumn(ctx)
        ImGui.Text(ctx, row.mine and "this project" or "elsewhere")
        ImGui.TableNextColumn(ctx)
        for i, a in ipairs(rows.row_actions(row)) do
          if i > 1 then ImGui.SameLine(ctx) end
          if ImGui.SmallButton(ctx, a[1] .. "##" .. row.id) then cmds[#cmds + 1] = { a[2], row.id } end
        end
      end
      ImGui.EndTable(ctx)
    end
    ImGui.Separator(ctx)
    self:settings_section(ctx, cmds)
    ImGui.End(ctx)
  end
  if open == false then cmds[#cmds + 1] = { "close" } end
  return cmds
end

function View:close()
  -- ReaImGui frees a context that is not used during a defer cycle.
  self.ctx = nil
end

return { new = new }
