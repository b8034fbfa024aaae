-- @noindex
-- The job panel in a gfx window, for REAPER without ReaImGui: the same information as the
-- ReaImGui view, one frame per defer tick. Buttons are boxes hit by a left click (on press);
-- the mouse wheel scrolls the job list; Esc or closing the window closes the panel. The window can
-- be docked (the Dock button, or REAPER's own docking) and opens docked again next time.
-- Settings open the settings dialog.
local reaper = reaper
local gfx = gfx
local settings = require("settings")
local rows = require("panel_rows")

local View = {}
View.__index = View

local DOCK_KEY = "panel_gfx_dock"
local LINE = 18
local CHAR_W = 7 -- px per character of the 14 px font (button widths)

local function new(title)
  return setmetatable({ title = title, hits = {}, last_cap = 0, scroll = 0 }, View)
end

function View:text(x, y, s, dim)
  local c = dim and 0.6 or 0.9
  gfx.set(c, c, c, 1)
  gfx.x, gfx.y = x, y
  gfx.drawstr(s)
end

-- A button at (x, y); returns the x after it.
function View:button(x, y, label, cmd)
  local w = #label * CHAR_W + 12
  gfx.set(0.28, 0.28, 0.3, 1)
  gfx.rect(x, y - 2, w, LINE, 1)
  self:text(x + 6, y, label)
  self.hits[#self.hits + 1] = { x = x, y = y - 2, w = w, h = LINE, cmd = cmd, label = label }
  return x + w + 6
end

function View:frame(p)
  if not self.opened then
    local dock = tonumber(reaper.GetExtState(settings.SECTION, DOCK_KEY)) or 0
    gfx.init(self.title, 780, 420, dock, 200, 200)
    gfx.setfont(1, "Arial", 14)
    self.opened = true
  end
  local cmds = {}
  local c = gfx.getchar()
  if c < 0 or c == 27 then
    cmds[#cmds + 1] = { "close" }
    return cmds
  end
  -- A click: the left button went down on a box drawn in the previous frame.
  local cap = gfx.mouse_cap & 1
  if cap == 1 and self.last_cap == 0 then
    for _, h in ipairs(self.hits) do
      if gfx.mouse_x >= h.x and gfx.mouse_x < h.x + h.w and gfx.mouse_y >= h.y and gfx.mouse_y < h.y + h.h then
        if h.cmd[1] == "dock" then
          gfx.dock(gfx.dock(-1) & 1 == 1 and 0 or 1)
        else
          cmds[#cmds + 1] = h.cmd
        end
      end
    end
  end
  self.last_cap = cap
  self.hits = {}
  if gfx.mouse_wheel ~= 0 then
    self.scroll = math.max(0, math.min(#p.rows - 1, self.scroll - math.floor(gfx.mouse_wheel / 120)))
    gfx.mouse_wheel = 0 -- luacheck: ignore 122 (REAPER: the script resets the wheel it has read)
  end

  gfx.set(0.13, 0.13, 0.14, 1)
  gfx.rect(0, 0, gfx.w, gfx.h, 1)
  local d = p.daemon
  local y = 8
  self:text(10, y, rows.daemon_line(d, settings.get("engine")))
  y = y + LINE
  self:text(10, y, rows.model_line(d), true) -- (a line even when empty: the buttons stay put)
  y = y + LINE + 4
  local x = 10
  if d.state == "running" then
    x = self:button(x, y, "Stop daemon", { "stop" })
  elseif d.state ~= "starting" and d.state ~= "stopping" then
    x = self:button(x, y, "Start daemon", { "start" })
  end
  x = self:button(x, y, "Open log", { "log" })
  x = self:button(x, y, "Settings...", { "settings_dialog" })
  self:button(x, y, (gfx.dock(-1) & 1 == 1) and "Undock" or "Dock", { "dock" })
  y = y + LINE + 4
  if p.note ~= "" then
    self:text(10, y, p.note, true)
    y = y + LINE
  end
  if #p.rows == 0 then self:text(10, y + 4, "No jobs yet.", true) end
  local first = math.min(self.scroll, math.max(0, #p.rows - 1)) + 1
  if first > 1 then
    self:text(10, y, string.format("(%d newer above: scroll up)", first - 1), true)
    y = y + LINE
  end
  for i = first, #p.rows do
    local row = p.rows[i]
    if y > gfx.h - 2 * LINE then
      self:text(10, y + 4, string.format("(%d older below: scroll down)", #p.rows - i + 1), true)
      break
    end
    y = y + 4
    -- The job on a line of its own (the window's width), then its state and buttons.
    self:text(10, y, rows.job_label(row, (gfx.w - 20) // CHAR_W))
    y = y + LINE
    if row.state == "running" or row.state == "queued" then
      gfx.set(0.3, 0.3, 0.32, 1)
      gfx.rect(24, y, 260, 14, 1)
      gfx.set(0.35, 0.65, 0.95, 1)
      gfx.rect(24, y, math.floor(260 * row.fraction), 14, 1)
    end
    local failed = row.state == "error"
    self:text(26, y, failed and ("failed" .. (row.code and (" (" .. row.code .. ")") or "")) or rows.state_text(row),
      row.final)
    local bx = 300
    for _, a in ipairs(rows.row_actions(row)) do bx = self:button(bx, y, a[1], { a[2], row.id }) end
    y = y + LINE
    if failed then -- the message on a line of its own
      self:text(24, y, rows.elide(row.message, math.max(20, (gfx.w - 34) // CHAR_W)), true)
      y = y + LINE
    end
  end
  gfx.update()
  return cmds
end

function View:close()
  if self.opened then
    reaper.SetExtState(settings.SECTION, DOCK_KEY, tostring(math.floor(gfx.dock(-1))), true)
    gfx.quit()
  end
  self.opened = false
end

return { new = new }
