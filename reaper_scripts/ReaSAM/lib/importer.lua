-- @noindex
-- Import a finished job's stems as new tracks right under the source track (or as new takes of
-- the original item: settings `place`), lined up to the sample with the original item; on a
-- repeat (settings `on_repeat`) in place of the stems ReaSAM made for it before.
--
-- Stem frame 0 is file time manifest.region_start. The original take plays file time
--   offset + D_STARTOFFS + (t - D_POSITION) * D_PLAYRATE   at project time t,
-- so the stem's frame 0 sits at project time
--   T0 = D_POSITION + (region_start - offset - D_STARTOFFS) / D_PLAYRATE
-- and the new item gets the original's position and length (clipped to what the stem covers),
-- its take D_STARTOFFS = (position - T0) * D_PLAYRATE and the original's playrate and pitch
-- settings, so every stem plays exactly the samples the original plays at that moment.
--
-- As takes, the same mapping gives each new take of the original item its D_STARTOFFS (see
-- importer.take_placement).
--
-- A stem set's job lands in a folder track under the source track: one coloured track per
-- prompt, then the rest. A target the daemon reports as not present (manifest `present`
-- false) is not imported unless the import_absent setting says so; the caller says why.
local reaper = reaper
local util = require("util")
local settings = require("settings")
local stems_lib = require("stems")
local marks = require("stem_marks")
local take_envelopes = require("take_envelopes")

local importer = {}

local function set_name(track, name)
  reaper.GetSetMediaTrackInfo_String(track, "P_NAME", name, true)
end

local function track_key(track)
  local _, key = reaper.GetSetMediaTrackInfo_String(track, "P_EXT:reasam_key", "", false)
  return key or ""
end

local function find_track(key)
  for i = 0, reaper.CountTracks(0) - 1 do
    local tr = reaper.GetTrack(0, i)
    if track_key(tr) == key then return tr end
  end
  return nil
end

local function track_index(track)
  return math.floor(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")) - 1
end

local function valid(ptr, kind)
  if ptr == nil then return false end
  if reaper.ValidatePtr2 then return reaper.ValidatePtr2(0, ptr, kind) end
  return true
end

local function take_index(item, take)
  for i = 0, reaper.CountTakes(item) - 1 do
    if reaper.GetTake(item, i) == take then return i end
  end
  error("the stem take is not in its item", 0)
end

-- What one import call changed, so that a failure can take it back: the tracks and items it
-- created, and the values it changed on objects that were there before.
local function new_changes()
  return { tracks = {}, items = {}, values = {} }
end

local ACCESSORS = {
  ["MediaTrack*"] = { "GetMediaTrackInfo_Value", "SetMediaTrackInfo_Value" },
  ["MediaItem*"] = { "GetMediaItemInfo_Value", "SetMediaItemInfo_Value" },
}

-- Sets a value on an object that existed before this import, remembering the old value.
local function set_existing(changes, kind, obj, key, value)
  local get, set = reaper[ACCESSORS[kind][1]], reaper[ACCESSORS[kind][2]]
  changes.values[#changes.values + 1] = { kind, obj, key, get(obj, key) }
  set(obj, key, value)
end

-- Deletes what a failed call created and restores what it changed, newest first, so the undo
-- block it was in holds no change.
local function roll_back(changes)
  local gone = {}
  for i = #changes.tracks, 1, -1 do
    local tr = changes.tracks[i]
    if valid(tr, "MediaTrack*") then reaper.DeleteTrack(tr) end
    gone[tr] = true
  end
  for i = #changes.items, 1, -1 do
    local e = changes.items[i]
    if not gone[e.track] and valid(e.item, "MediaItem*") then reaper.DeleteTrackMediaItem(e.track, e.item) end
  end
  for i = #changes.values, 1, -1 do
    local kind, obj, key, old = table.unpack(changes.values[i])
    if valid(obj, kind) then reaper[ACCESSORS[kind][2]](obj, key, old) end
  end
end

-- Inserts tracks right under the source track: names = { { key, name }, ... }, the first a
-- folder when `folder`. Returns them by key and in order.
local function create_tracks(src_track, base, names, folder, changes)
  local at = src_track and track_index(src_track) + 1 or reaper.CountTracks(0)
  local created = {}
  for i, entry in ipairs(names) do
    reaper.InsertTrackAtIndex(at + i - 1, true)
    local tr = reaper.GetTrack(0, at + i - 1)
    changes.tracks[#changes.tracks + 1] = tr
    set_name(tr, entry[2])
    reaper.GetSetMediaTrackInfo_String(tr, "P_EXT:reasam_key", base .. ":" .. entry[1], true)
    reaper.SetMediaTrackInfo_Value(tr, "I_FOLDERDEPTH", 0)
    created[entry[1]] = tr
    created[#created + 1] = tr
  end
  local last = created[#created]
  local close = 0
  if folder then
    reaper.SetMediaTrackInfo_Value(created[1], "I_FOLDERDEPTH", 1)
    close = -1
  end
  -- A source track that closes folders hands the closing over to the last new track, so the
  -- new tracks stay in the same folder as the source.
  if src_track then
    local depth = reaper.GetMediaTrackInfo_Value(src_track, "I_FOLDERDEPTH")
    if depth < 0 then
      set_existing(changes, "MediaTrack*", src_track, "I_FOLDERDEPTH", 0)
      close = close + depth
    end
  end
  reaper.SetMediaTrackInfo_Value(last, "I_FOLDERDEPTH", close)
  return created
end

local function source_track(job)
  local src_track = job.request.track
  if not valid(src_track, "MediaTrack*") then src_track = nil end
  local guid = src_track and reaper.GetTrackGUID(src_track) or "none"
  return src_track, guid
end

-- Creates (or, for a second item of the same batch on the same track, reuses) the tracks.
local function tracks_for(job, opts, changes)
  local src_track, guid = source_track(job)
  local base = (opts.batch or job.id) .. ":" .. guid .. ":" .. util.slug(job.prompt_name, 64)
  local target = find_track(base .. ":target")
  local residual = find_track(base .. ":residual")
  if target and residual then return target, residual, false end
  local names = {}
  if opts.folder then names[#names + 1] = { "folder", job.prompt_name .. " (ReaSAM)" } end
  names[#names + 1] = { "target", settings.track_name("target", job.prompt_name) }
  names[#names + 1] = { "residual", settings.track_name("residual", job.prompt_name) }
  local created = create_tracks(src_track, base, names, opts.folder, changes)
  return created.target, created.residual, true
end

-- Where the stem's first frame and the processed part sit in project time.
function importer.placement(req, stem, sample_rate)
  local off, so, rate, pos = req.section_offset or 0, req.startoffs, req.playrate, req.item_position
  local function to_project(file_t) return pos + (file_t - off - so) / rate end
  local t0 = to_project(stem.region_start)
  local stem_end = stem.region_end
  local tol = 1e-3
  if stem.frames and sample_rate and sample_rate > 0 then
    stem_end = math.min(stem_end, stem.region_start + stem.frames / sample_rate)
    tol = 1.5 / sample_rate
  end
  -- A region rarely holds a whole number of frames: a stem less than a frame short of the
  -- requested end is rounding, not a shorter stem, and the new item keeps the original's length.
  if stem_end >= req.region_end - tol then stem_end = math.max(stem_end, req.region_end) end
  local p0 = math.max(t0, to_project(req.region_start), pos)
  local p1 = math.min(to_project(stem_end), to_project(req.region_end), pos + req.item_length)
  return {
    position = p0,
    length = p1 - p0,
    startoffs = (p0 - t0) * rate,
    playrate = rate,
  }
end

-- The take's gain stage as the original's: D_PANLAW (-1 = the project's pan law) with D_PAN and
-- D_VOL, so that the stems pan and sum like the original did.
local TAKE_COPY = { "D_PLAYRATE", "B_PPITCH", "D_PITCH", "I_PITCHMODE", "D_VOL", "D_PAN", "D_PANLAW", "I_CHANMODE" }

local function open_source(path)
  local src = reaper.PCM_Source_CreateFromFile(path)
  if not src then error("REAPER could not open " .. path, 0) end
  return src
end

local function copy_take_values(orig_take, take)
  if not valid(orig_take, "MediaItem_Take*") then return end
  for _, key in ipairs(TAKE_COPY) do
    reaper.SetMediaItemTakeInfo_Value(take, key, reaper.GetMediaItemTakeInfo_Value(orig_take, key))
  end
end

local function add_item(track, src, place, job, stem_name, changes)
  local req = job.request
  local item = reaper.AddMediaItemToTrack(track)
  changes.items[#changes.items + 1] = { track = track, item = item }
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, src)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", place.position)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", place.length)
  reaper.SetMediaItemInfo_Value(item, "B_LOOPSRC", 0)
  local orig_item = req.item
  copy_take_values(req.take, take)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", place.playrate)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", place.startoffs)
  if valid(orig_item, "MediaItem*") then
    reaper.SetMediaItemInfo_Value(item, "D_VOL", reaper.GetMediaItemInfo_Value(orig_item, "D_VOL"))
    -- Fades (and the auto-crossfades REAPER made with neighbours) belong to the original's edges:
    -- keep them where the new item shares an edge.
    local opos = req.item_position
    if math.abs(place.position - opos) < 1e-6 then
      for _, key in ipairs({ "D_FADEINLEN", "C_FADEINSHAPE", "D_FADEINDIR", "D_FADEINLEN_AUTO" }) do
        reaper.SetMediaItemInfo_Value(item, key, reaper.GetMediaItemInfo_Value(orig_item, key))
      end
    end
    if math.abs(place.position + place.length - (opos + req.item_length)) < 1e-6 then
      for _, key in ipairs({ "D_FADEOUTLEN", "C_FADEOUTSHAPE", "D_FADEOUTDIR", "D_FADEOUTLEN_AUTO" }) do
        reaper.SetMediaItemInfo_Value(item, key, reaper.GetMediaItemInfo_Value(orig_item, key))
      end
    end
    -- The snap offset (from the item's start) stays on the same moment of the audio.
    local snap = opos + reaper.GetMediaItemInfo_Value(orig_item, "D_SNAPOFFSET") - place.position
    reaper.SetMediaItemInfo_Value(item, "D_SNAPOFFSET", math.max(0, math.min(place.length, snap)))
  end
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", stem_name, true)
  return item, take
end

-- Picks the target and residual stems of a manifest; nil, message when it lacks them.
function importer.stems(manifest)
  if type(manifest) ~= "table" or type(manifest.stems) ~= "table" then
    return nil, "the manifest has no stems"
  end
  local target, residual
  for _, s in ipairs(manifest.stems) do
    if s.role == "target" and not target then target = s end
    if s.role == "residual" and not residual then residual = s end
  end
  if not target or not residual then return nil, "the manifest lacks a target or a residual stem" end
  for _, s in ipairs({ target, residual }) do
    if type(s.path) ~= "string" or not util.file_exists(s.path) then
      return nil, "stem file missing: " .. tostring(s.path)
    end
    if type(s.region_start) ~= "number" or type(s.region_end) ~= "number" then
      return nil, "stem without region_start/region_end in the manifest"
    end
  end
  return target, residual
end

-- Whether the daemon found a target stem's sound (a manifest without the flag: found).
function importer.found(stem)
  return stem.present ~= false
end

local function check_stem(s)
  if type(s.path) ~= "string" or not util.file_exists(s.path) then
    return "stem file missing: " .. tostring(s.path)
  end
  if type(s.region_start) ~= "number" or type(s.region_end) ~= "number" then
    return "stem without region_start/region_end in the manifest"
  end
  return nil
end

-- A stem set's targets (in order) and residual; nil, message when the manifest lacks them.
function importer.set_stems(manifest)
  if type(manifest) ~= "table" or type(manifest.stems) ~= "table" then
    return nil, "the manifest has no stems"
  end
  local targets, residual = {}, nil
  for _, s in ipairs(manifest.stems) do
    if s.role == "target" then targets[#targets + 1] = s end
    if s.role == "residual" and not residual then residual = s end
  end
  if #targets == 0 or not residual then return nil, "the manifest lacks target or residual stems" end
  for _, s in ipairs({ residual, table.unpack(targets) }) do
    local err = check_stem(s)
    if err then return nil, err end
  end
  return targets, residual
end

-- Tracks of a stem set: a folder under the source track, then one track per stem, each
-- coloured; a stem marked `absent` gets a muted track named "<prompt> (not found)". A second item
-- of the same batch on the same track reuses them when all are there.
local function set_tracks(job, stems, opts, changes)
  local src_track, guid = source_track(job)
  local keys = {}
  for i, st in ipairs(stems) do keys[i] = st.absent and (st.name .. " (not found)") or st.name end
  local base = (opts.batch or job.id) .. ":" .. guid .. ":set:" .. util.slug(table.concat(keys, " "), 64)
  local found = { folder = find_track(base .. ":folder") }
  local all = found.folder ~= nil
  for i = 1, #stems do
    found[i] = find_track(base .. ":stem" .. i)
    all = all and found[i] ~= nil
  end
  if all then return found end
  local entries = { { "folder", job.prompt_name .. " (ReaSAM)" } }
  for i, st in ipairs(stems) do
    local shown = st.name == "rest" and "rest" or settings.track_name("target", st.name)
    if st.absent then shown = shown .. " (not found)" end
    entries[#entries + 1] = { "stem" .. i, shown }
  end
  local created = create_tracks(src_track, base, entries, true, changes)
  local out = { folder = created.folder }
  for i, st in ipairs(stems) do
    out[i] = created["stem" .. i]
    reaper.SetMediaTrackInfo_Value(out[i], "I_CUSTOMCOLOR", stems_lib.color(st.name, i))
    if st.absent then reaper.SetMediaTrackInfo_Value(out[i], "B_MUTE", 1) end
  end
  return out
end

-- Runs `body(changes)` as one import: in an undo block (unless opts.undo is false) with UI refresh
-- held; if it fails, what it created is deleted and what it changed restored before the block
-- closes. Returns `result`, or nil and the message.
local function transaction(job, opts, result, body)
  local changes = new_changes()
  local undo = opts.undo ~= false
  if undo then reaper.Undo_BeginBlock() end
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(body, changes)
  if not ok then
    local rolled, rerr = pcall(roll_back, changes)
    if not rolled then err = tostring(err) .. " (and undoing the partial import failed: " .. tostring(rerr) .. ")" end
  end
  reaper.PreventUIRefresh(-1)
  if undo then reaper.Undo_EndBlock("ReaSAM: separate " .. job.prompt_name, -1) end
  reaper.UpdateArrange()
  if not ok then return nil, tostring(err) end
  return result
end

-- Where the new take of a stem starts in its source, to play in the original item exactly what
-- the original take plays there: at project time t the original plays file time
--   offset + D_STARTOFFS + (t - D_POSITION) * D_PLAYRATE
-- and the new take plays stem time  startoffs + (t - D_POSITION) * D_PLAYRATE, stem time 0 being
-- file time region_start; so startoffs = offset + D_STARTOFFS - region_start (negative when the
-- stem starts later: REAPER plays silence before a source's start, as the original does there).
function importer.take_placement(req, stem)
  return { startoffs = (req.section_offset or 0) + req.startoffs - stem.region_start, playrate = req.playrate }
end

-- Why stems cannot be takes of the original item (then they go on tracks), or nil. A take spans
-- the whole item: only stems that cover everything the original plays in it can be one.
function importer.takes_refusal(req, plan, sample_rate)
  if req.partial then return "only part of the item was separated (the time selection)" end
  if not valid(req.item, "MediaItem*") or not valid(req.take, "MediaItem_Take*") then
    return "the original item is gone"
  end
  local tol = (sample_rate and sample_rate > 0) and 1.5 / sample_rate or 1e-3
  for _, p in ipairs(plan) do
    local s = p.stem
    local stem_end = s.region_end
    if s.frames and sample_rate and sample_rate > 0 then stem_end = s.region_start + s.frames / sample_rate end
    if s.region_start > req.region_start + tol or stem_end < req.region_end - tol then
      return "the stems do not cover the whole item"
    end
  end
  return nil
end

local function delete_items(entries)
  local gone = {}
  for _, e in ipairs(entries) do
    if e.kind == "item" and not gone[e.item] and valid(e.item, "MediaItem*") then
      gone[e.item] = true
      reaper.DeleteTrackMediaItem(reaper.GetMediaItem_Track(e.item), e.item)
    end
  end
end

-- A new stem item; its take gets the envelopes later (pending), moved back by as much take time
-- as the item starts after the original.
local function add_stem_item(track, p, job, changes, pending)
  local item, take = add_item(track, p.src, p.place, job, p.name, changes)
  pending[#pending + 1] = { take, (p.place.position - job.request.item_position) * p.place.playrate }
  return item, take
end

-- Puts a stem into a take (new or earlier) of the original item.
local function fill_take(take, p, job)
  local req = job.request
  local tp = importer.take_placement(req, p.stem)
  reaper.SetMediaItemTake_Source(take, p.src)
  copy_take_values(req.take, take)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", tp.playrate)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", tp.startoffs)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", p.name, true)
end

-- The import itself, for a pair or a set: `plan` lists { stem, name, role, key, prompt }.
-- opts: { place, take_residual, active_take, on_repeat, mute, ... }; make_tracks(changes, plan)
-- gives one track per plan entry (tracks mode). Opens every stem before changing the project,
-- so that what follows cannot fail half-way through what cannot be rolled back (a deleted
-- earlier stem, a new take).
local function import_plan(job, plan, rate, opts, result, make_tracks)
  local req = job.request
  for _, p in ipairs(plan) do
    p.place = importer.placement(req, p.stem, rate)
    if p.place.length <= 0 then return nil, "the stem does not overlap the item" end
  end
  local takes = opts.place == "takes"
  if takes then
    local why = importer.takes_refusal(req, plan, rate)
    if why then
      result.fallback = why
      takes = false
    end
  end
  local use = plan
  if takes and opts.take_residual == false then
    use = {}
    for _, p in ipairs(plan) do if p.role ~= "residual" then use[#use + 1] = p end end
  end
  local takes_ok = importer.takes_refusal(req, use, rate) == nil
  return transaction(job, opts, result, function(changes)
    for _, p in ipairs(use) do p.src = open_source(p.stem.path) end
    local earlier = opts.on_repeat == "keep" and {} or marks.earlier(job)
    local reuse = marks.reusable(earlier, use, takes_ok)
    local out_takes, pending = {}, {}
    if reuse then
      -- The new stems take the earlier ones' places: their takes, or their tracks.
      for _, p in ipairs(use) do
        local e = reuse[p.key]
        if e.kind == "take" then
          fill_take(e.take, p, job)
          pending[#pending + 1] = { e.take, 0 }
          out_takes[#out_takes + 1] = e.take
          marks.stamp(e.take, job, p)
        else
          local item, take = add_stem_item(e.track, p, job, changes, pending)
          marks.stamp(take, job, p)
          result.items[#result.items + 1] = item
          result.tracks[#result.tracks + 1] = e.track
        end
      end
      -- An earlier take no new stem took (the residual, when only targets go to takes now) stays:
      -- a take cannot be removed through the API.
      local used = {}
      for _, p in ipairs(use) do used[reuse[p.key]] = true end
      for _, e in ipairs(earlier) do
        if e.kind == "take" and not used[e] then result.left = (result.left or 0) + 1 end
      end
      result.replaced = #earlier - (result.left or 0)
    else
      for _, e in ipairs(earlier) do
        if e.kind == "take" then result.left = (result.left or 0) + 1 end
      end
      result.replaced = #earlier - (result.left or 0)
      if takes then
        for _, p in ipairs(use) do
          local take = reaper.AddTakeToMediaItem(req.item)
          fill_take(take, p, job)
          pending[#pending + 1] = { take, 0 }
          marks.stamp(take, job, p)
          out_takes[#out_takes + 1] = take
        end
      else
        local tracks = make_tracks(changes, use)
        for i, p in ipairs(use) do
          local item, take = add_stem_item(tracks[i], p, job, changes, pending)
          marks.stamp(take, job, p)
          result.tracks[#result.tracks + 1] = tracks[i]
          result.items[#result.items + 1] = item
        end
      end
    end
    result.take_count = #out_takes
    if #out_takes > 0 then
      -- The target plays (what the action isolated), unless the setting keeps the original.
      reaper.SetActiveTake(opts.active_take == "original" and req.take or out_takes[1])
    elseif opts.mute and valid(req.item, "MediaItem*") then
      set_existing(changes, "MediaItem*", req.item, "B_MUTE", 1)
    end
    -- Where each stem take sits: the envelope copy writes item chunks, from which REAPER may
    -- make the takes and their sources anew, freeing the pointers held until then.
    local places = {}
    for i, e in ipairs(pending) do
      local item = reaper.GetMediaItemTake_Item(e[1])
      places[i] = { item, take_index(item, e[1]) }
    end
    take_envelopes.copy(job.request.take, pending) -- after the rest: it may make the items' takes anew
    -- The sources (for peaks) are read back from the takes as they are now.
    for _, pl in ipairs(places) do
      local take = reaper.GetTake(pl[1], pl[2])
      local src = take and reaper.GetMediaItemTake_Source(take)
      if src then result.sources[#result.sources + 1] = src end
    end
    -- The earlier stem items (all of them ReaSAM's) go last: nothing can fail after this, so a
    -- failure before it leaves them as they were.
    delete_items(earlier)
  end)
end

-- Imports one stem-set job into its folder. opts: { mute, batch, import_absent, undo, place,
-- take_residual, active_take, on_repeat }.
-- Returns { items, sources, tracks, take_count, skipped = { prompt names not found } } or nil, message. A
-- target the daemon did not find goes on a muted "<prompt> (not found)" track after the rest
-- (the residual is the region minus every target, so the tracks still sum to the original);
-- import_absent puts it among the others, unmuted. With no target found (and import_absent off)
-- it imports nothing and returns result.nothing = true. opts.undo == false: no undo block (the
-- caller makes one undo point for several jobs).
function importer.import_set(job, manifest, opts)
  local targets, residual = importer.set_stems(manifest)
  if not targets then return nil, residual end
  local rate = tonumber(manifest.sample_rate)
  local result = { items = {}, sources = {}, tracks = {}, skipped = {} }
  local plan, absent = {}, {}
  for _, s in ipairs(targets) do
    local shown = settings.track_name("target", s.name)
    if importer.found(s) or opts.import_absent then
      plan[#plan + 1] = { stem = s, name = shown, key = s.name, prompt = s.name, role = "target" }
    else
      absent[#absent + 1] = { stem = s, name = shown .. " (not found)", key = s.name, prompt = s.name,
        role = "target", absent = true }
      result.skipped[#result.skipped + 1] = s.name
    end
  end
  if #plan == 0 then
    result.nothing = true
    return result
  end
  plan[#plan + 1] = { stem = residual, name = "rest", key = "rest", role = "residual" }
  table.move(absent, 1, #absent, #plan + 1, plan)
  return import_plan(job, plan, rate, opts, result, function(changes, use)
    local stems = {}
    for i, p in ipairs(use) do stems[i] = { name = p.key, absent = p.absent } end
    return set_tracks(job, stems, opts, changes)
  end)
end

-- Imports one job. opts: { folder, mute, batch, undo, place, take_residual, active_take,
-- on_repeat }. Returns { items, sources, tracks, take_count } or nil, message. A failure half-way
-- leaves the project as it was: what this call created is deleted (and what it changed
-- restored) before the undo block closes.
function importer.import(job, manifest, opts)
  local target, residual = importer.stems(manifest)
  if not target then return nil, residual end
  local rate = tonumber(manifest.sample_rate)
  local result = { items = {}, sources = {}, tracks = {} }
  local plan = {
    { stem = target, name = settings.track_name("target", job.prompt_name), key = "target", role = "target" },
    { stem = residual, name = settings.track_name("residual", job.prompt_name), key = "residual", role = "residual" },
  }
  return import_plan(job, plan, rate, opts, result, function(changes, use)
    local tr_target, tr_residual = tracks_for(job, opts, changes)
    local out = {}
    for i, p in ipairs(use) do out[i] = p.role == "target" and tr_target or tr_residual end
    return out
  end)
end

return importer
