-- @noindex
-- From what the user selected to separation requests, in source seconds.
--
-- For a take that is not reversed, has no stretch markers and does not loop its source,
-- project time t plays source time  D_STARTOFFS + (t - D_POSITION) * D_PLAYRATE  (in the
-- coordinates of the take's source; sections add their offset on the way to the file).
-- Everything that cannot be mapped exactly is refused with a message instead of being imported
-- misaligned.
local reaper = reaper
local util = require("util")

local selection = {}

local EPS = 1e-9
-- Decoders disagree by a few samples on a file's length; the daemon clamps up to 50 ms.
local END_TOLERANCE = 0.001

local function item_label(item, take)
  local name = ""
  if take then
    local _, n = reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", "", false)
    name = n or ""
  end
  local track = reaper.GetMediaItem_Track(item)
  local tn = track and math.floor(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")) or 0
  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  if name ~= "" then
    return string.format("'%s' (track %d at %s)", name, tn, util.clock(pos))
  end
  return string.format("item on track %d at %s", tn, util.clock(pos))
end

local function source_length(src)
  local len, is_qn = reaper.GetMediaSourceLength(src)
  if is_qn then return nil end
  return len
end

-- Walks section/reversed wrappers down to the file. Returns
-- { path, offset (seconds added to map take-source time to file time), length (of the take's
-- source, seconds), file_length } or nil, message.
function selection.resolve_source(take)
  local src = reaper.GetMediaItemTake_Source(take)
  if not src then return nil, "has no source" end
  local top_len = source_length(src)
  local offset = 0
  local limit = top_len
  local depth = 0
  while true do
    local parent = reaper.GetMediaSourceParent(src)
    if not parent then break end
    depth = depth + 1
    if depth > 16 then return nil, "has too deeply nested sources" end
    if reaper.PCM_Source_GetSectionInfo then
      local ok, offs, len, rev = reaper.PCM_Source_GetSectionInfo(src)
      if ok then
        if rev then
          return nil, "is reversed: ReaSAM cannot align stems of a reversed take "
            .. "(un-reverse it, or glue/apply it first)"
        end
        offset = offset + (offs or 0)
        if len and len > 0 then
          limit = limit and math.min(limit, len) or len
        end
      end
    end
    src = parent
  end
  local path
  if reaper.GetMediaSourceFileName then
    local a, b = reaper.GetMediaSourceFileName(src, "")
    path = type(a) == "string" and a or b
  end
  if not path or path == "" then
    return nil, "has no source file (is it a generated or in-project source?)"
  end
  local file_len = source_length(src)
  if not file_len then return nil, "has a source with a length in beats" end
  return { path = path, offset = offset, length = limit or file_len, file_length = file_len, source = src }
end

local function is_midi(take)
  if reaper.TakeIsMIDI and reaper.TakeIsMIDI(take) then return true end
  local src = reaper.GetMediaItemTake_Source(take)
  if src and reaper.GetMediaSourceType then
    local t = reaper.GetMediaSourceType(src, "")
    if t == "MIDI" or t == "MIDIPOOL" then return true end
  end
  return false
end

-- Maps one item to a request. opts: { span_project = {start, stop} | nil,
-- limit = {start, stop} | nil (project seconds) }. Returns request or nil, note, kind where kind
-- is "skipped" (not an error: MIDI, empty), "outside" (of the limit) or "refused".
-- The take to separate: the active one, or, when that is a stem ReaSAM put in the item (settings:
-- place = takes), the original take it came from.
local function source_take(item)
  local take = reaper.GetActiveTake(item)
  if not take then return nil end
  local _, orig = reaper.GetSetMediaItemTakeInfo_String(take, "P_EXT:reasam_take", "", false)
  if not orig or orig == "" then return take end
  for i = 0, reaper.CountTakes(item) - 1 do
    local tk = reaper.GetTake(item, i)
    local _, g = reaper.GetSetMediaItemTakeInfo_String(tk, "GUID", "", false)
    if g == orig then return tk end
  end
  return take
end

function selection.map_item(item, opts)
  opts = opts or {}
  local take = source_take(item)
  if not take then return nil, item_label(item) .. " is empty: skipped", "skipped" end
  local label = item_label(item, take)
  if is_midi(take) then return nil, label .. " is MIDI: skipped", "skipped" end
  local rev_ok = reaper.GetTakeNumStretchMarkers and reaper.GetTakeNumStretchMarkers(take) or 0
  if rev_ok > 0 then
    return nil, label .. " has stretch markers: ReaSAM cannot align stems through them "
      .. "(remove them, or render/glue the item first)", "refused"
  end
  local info, err = selection.resolve_source(take)
  if not info then return nil, label .. " " .. err, "refused" end

  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local len = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local rate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  if not rate or rate <= 0 then return nil, label .. " has an invalid playrate", "refused" end
  local loops = reaper.GetMediaItemInfo_Value(item, "B_LOOPSRC") == 1

  -- The project interval to process: the item, or its overlap with the limit.
  local p0, p1 = pos, pos + len
  if opts.limit then
    p0, p1 = math.max(p0, opts.limit[1]), math.min(p1, opts.limit[2])
    if p1 - p0 <= EPS then
      return nil, label .. " is outside the time selection: skipped", "outside"
    end
  end
  -- In the take's source coordinates.
  local function to_src(t) return startoffs + (t - pos) * rate end
  local s0, s1 = to_src(p0), to_src(p1)
  local src_len = info.length
  if s1 > src_len + END_TOLERANCE then
    if loops then
      return nil, string.format("%s loops its source past the end (%s > %s): ReaSAM cannot align "
        .. "looped stems (turn off 'Loop source' or glue the item first)", label,
        util.clock(s1), util.clock(src_len)), "refused"
    end
    s1 = src_len -- REAPER plays silence past the end of an unlooped source
  end
  if s0 < 0 then
    if loops then
      return nil, label .. " loops its source before its start: ReaSAM cannot align looped stems "
        .. "(turn off 'Loop source' or glue the item first)", "refused"
    end
    s0 = 0
  end
  if s1 - s0 <= 1e-4 then
    return nil, label .. " plays no part of its source: skipped", "skipped"
  end

  local req = {
    item = item,
    take = take,
    track = reaper.GetMediaItem_Track(item),
    label = label,
    path = info.path,
    -- file seconds
    region_start = s0 + info.offset,
    region_end = math.min(s1 + info.offset, info.file_length + END_TOLERANCE),
    -- what the import needs to line the stems up
    item_position = pos,
    item_length = len,
    startoffs = startoffs,
    playrate = rate,
    section_offset = info.offset,
    -- the limit leaves out part of the item (its stems cannot be takes of it)
    partial = p0 > pos + EPS or p1 < pos + len - EPS,
    spans = {},
  }
  if opts.span_project then
    local a = math.max(opts.span_project[1], p0)
    local b = math.min(opts.span_project[2], p1)
    if b - a <= 1e-3 then
      return nil, label .. " does not overlap the time selection: skipped", "skipped"
    end
    local sa = math.max(to_src(a), s0) + info.offset
    local sb = math.min(to_src(b), s1) + info.offset
    req.spans[1] = "+" .. util.num(sa) .. ":" .. util.num(sb)
  end
  return req
end

-- The time selection, or nil.
function selection.time_selection()
  local a, b = reaper.GetSet_LoopTimeRange2(0, false, false, 0, 0, false)
  if b - a > EPS then return a, b end
  return nil
end

-- Every selected item. Returns requests, notes (list of strings), refused (count). Items outside
-- the limit make one note together.
function selection.collect(opts)
  local requests, notes, refused, outside = {}, {}, 0, 0
  local n = reaper.CountSelectedMediaItems(0)
  for i = 0, n - 1 do
    local item = reaper.GetSelectedMediaItem(0, i)
    local req, note, kind = selection.map_item(item, opts)
    if req then
      requests[#requests + 1] = req
    elseif kind == "outside" then
      outside = outside + 1
    else
      notes[#notes + 1] = note
      if kind == "refused" then refused = refused + 1 end
    end
  end
  if outside > 0 then
    notes[#notes + 1] = string.format("%d selected item%s outside the time selection: skipped", outside,
      outside == 1 and " is" or "s are")
  end
  return requests, notes, refused
end

return selection
