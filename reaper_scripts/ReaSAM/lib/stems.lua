-- @noindex
-- Stem sets in REAPER: which stems to ask for (a checklist that remembers the last choice, with
-- free-text additions), and the colour of each stem's track.
--
-- The checklist is a ReaImGui window when ReaImGui is installed (it runs in the defer loop, so
-- REAPER never waits on it), else one GetUserInputs dialog with a y/n field per stem.
local reaper = reaper
local util = require("util")
local settings = require("settings")
local reaimgui = require("reaimgui")

local stems = {}

-- What the checklist offers, in this order; anything else goes in the free-text field.
stems.CHOICES = { "vocals", "drums", "bass", "guitar", "piano", "strings", "speech" }
-- First use: the classic four-stem split.
stems.DEFAULT = { "vocals", "drums", "bass" }

-- Default colours (R, G, B) per common stem; the setting stem_colors overrides any of them.
stems.PALETTE = {
  vocals = { 236, 95, 103 },
  drums = { 249, 145, 87 },
  bass = { 102, 153, 204 },
  guitar = { 153, 199, 148 },
  piano = { 197, 148, 197 },
  strings = { 250, 200, 99 },
  speech = { 95, 179, 179 },
  rest = { 140, 140, 140 },
}
-- Stems the palette does not name take these in turn.
stems.OTHERS = { { 171, 121, 103 }, { 120, 160, 110 }, { 110, 130, 200 }, { 200, 120, 160 } }

-- "vocals=#FF0000; drums=#00ff00" -> { vocals = { 255, 0, 0 }, drums = { 0, 255, 0 } }; bad
-- entries are skipped.
function stems.parse_colors(text)
  local out = {}
  for _, entry in ipairs(util.split(text or "", ";")) do
    local name, hex = entry:match("^%s*(.-)%s*=%s*#?(%x%x%x%x%x%x)%s*$")
    if name and name ~= "" then
      out[name:lower()] = { tonumber(hex:sub(1, 2), 16), tonumber(hex:sub(3, 4), 16), tonumber(hex:sub(5, 6), 16) }
    end
  end
  return out
end

-- The colour of the index-th stem named `name`, as REAPER's I_CUSTOMCOLOR (native colour with
-- the "custom colour in use" flag).
function stems.color(name, index)
  local key = (name or ""):lower()
  local rgb = stems.parse_colors(settings.get("stem_colors"))[key] or stems.PALETTE[key]
    or stems.OTHERS[((index or 1) - 1) % #stems.OTHERS + 1]
  return reaper.ColorToNative(rgb[1], rgb[2], rgb[3]) | 0x1000000
end

-- The last choice, split into ticked checklist entries and free-text additions.
local function remembered()
  local last = settings.last_stems()
  if #last == 0 then last = stems.DEFAULT end
  local ticked, extra = {}, {}
  local offered = {}
  for _, c in ipairs(stems.CHOICES) do offered[c] = true end
  for _, p in ipairs(last) do
    if offered[p] then ticked[p] = true else extra[#extra + 1] = p end
  end
  return ticked, extra
end

-- Ticked choices (in checklist order) and the comma-separated additions, without repeats.
local function chosen(ticked, extra_text)
  local out, seen = {}, {}
  local function add(p)
    p = util.trim(p)
    if p ~= "" and not seen[p:lower()] then
      seen[p:lower()] = true
      out[#out + 1] = p
    end
  end
  for _, c in ipairs(stems.CHOICES) do
    if ticked[c] then add(c) end
  end
  for _, p in ipairs(util.split(extra_text or "", ",")) do add(p) end
  return out
end

-- The dialog: one y/n field per stem, then the additions. Returns the prompts or nil.
local function ask_dialog()
  local ticked, extra = remembered()
  local captions, values = {}, {}
  for i, c in ipairs(stems.CHOICES) do
    captions[i] = c .. " (y/n)"
    values[i] = ticked[c] and "y" or "n"
  end
  captions[#captions + 1] = "Also (comma-separated)"
  values[#values + 1] = table.concat(extra, ", ")
  local ok, csv = reaper.GetUserInputs("ReaSAM: which stems?", #captions,
    table.concat(captions, ",") .. ",extrawidth=200,separator=\n", table.concat(values, "\n"))
  if not ok then return nil end
  local got = util.split(csv, "\n")
  local now = {}
  for i, c in ipairs(stems.CHOICES) do
    local v = util.trim(got[i] or ""):lower()
    now[c] = v == "y" or v == "yes" or v == "1" or v == "x"
  end
  return chosen(now, got[#stems.CHOICES + 1])
end

-- The ReaImGui checklist, one frame per defer tick; calls done(prompts) or done(nil) once.
local function ask_imgui(done)
  local ImGui = reaimgui.load()
  local ticked, extra = remembered()
  local extra_text = table.concat(extra, ", ")
  local ctx = ImGui.CreateContext("ReaSAM stems")
  local function frame()
    local result
    local visible, open = ImGui.Begin(ctx, "ReaSAM: which stems?", true)
    if visible then
      for _, c in ipairs(stems.CHOICES) do
        local _, v = ImGui.Checkbox(ctx, c, ticked[c] == true)
        ticked[c] = v
      end
      local _, text = ImGui.InputText(ctx, "also (comma-separated)", extra_text)
      extra_text = text
      if ImGui.Button(ctx, "Separate") then result = "ok" end
      if ImGui.IsKeyPressed(ctx, ImGui.Key_Escape) then
        result = "cancel"
      end
      ImGui.End(ctx)
    end
    if open == false then result = "cancel" end
    if result == "ok" then
      done(chosen(ticked, extra_text))
    elseif result == "cancel" then
      done(nil)
    else
      reaper.defer(frame)
    end
  end
  frame()
end

-- Asks which stems, then calls done(prompts) (nil when the user cancelled). The choice is
-- remembered for next time.
function stems.ask(done)
  local function finish(prompts)
    if prompts and #prompts > 0 then settings.remember_stems(prompts) end
    done(prompts)
  end
  if reaimgui.available() then
    ask_imgui(finish)
  else
    finish(ask_dialog())
  end
end

return stems
