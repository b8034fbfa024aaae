-- A model of the REAPER API subset the ReaSAM scripts use, for busted under plain Lua 5.4.
--
-- It keeps a project (tracks, items, takes, sources with section/reversed parents), the item
-- selection and time selection, ExtState, undo blocks and PreventUIRefresh balance; it records
-- dialogs, message boxes and console text; ExecProcess really starts processes; and a defer
-- driver runs each script's deferred functions tick by tick, timing every call.
--
-- Each action file runs in its own environment with its own `require` cache, like a ReaScript
-- in its own Lua state; `reaper` and `gfx` are shared like REAPER's.
local socket = require("socket")
local wav = require("wav")

local M = {}

local function now() return socket.gettime() end

local ITEM_KEYS = {
  D_POSITION = 0, D_LENGTH = 0, D_SNAPOFFSET = 0, B_MUTE = 0, B_LOOPSRC = 0, B_UISEL = 0, D_VOL = 1,
  D_FADEINLEN = 0, D_FADEOUTLEN = 0, C_FADEINSHAPE = 0, C_FADEOUTSHAPE = 0, D_FADEINDIR = 0,
  D_FADEOUTDIR = 0, D_FADEINLEN_AUTO = -1, D_FADEOUTLEN_AUTO = -1, C_LOCK = 0, I_GROUPID = 0,
}
local TAKE_KEYS = {
  D_STARTOFFS = 0, D_PLAYRATE = 1, D_VOL = 1, D_PAN = 0, D_PANLAW = -1, B_PPITCH = 0, D_PITCH = 0,
  I_PITCHMODE = -1, I_CHANMODE = 0,
}
local TRACK_KEYS = {
  I_FOLDERDEPTH = 0, B_MUTE = 0, I_SOLO = 0, D_VOL = 1, D_PAN = 0, I_FOLDERCOMPACT = 0, I_CUSTOMCOLOR = 0,
}

-- Optional APIs the scripts probe for (present in current REAPER, guarded by existence).
M.OPTIONAL = {
  ImGui_CreateContext = true, ImGui_Begin = true, ImGui_SetNextWindowSize = true, ImGui_Cond_FirstUseEver = true,
  ImGui_Text = true, ImGui_ProgressBar = true, ImGui_Button = true, ImGui_IsKeyPressed = true,
  ImGui_Key_Escape = true, ImGui_End = true, PCM_Source_BuildPeaks = true, ImGui_Checkbox = true,
  ImGui_InputText = true, ImGui_GetBuiltinPath = true, CF_ShellExecute = true,
}

function M.new(opts)
  opts = opts or {}
  local model = {
    tracks = {},
    time_sel = { 0, 0 },
    ext = {},
    ext_persist = {},
    undo_depth = 0,
    undo = {},
    loose_edits = 0,
    edits = 0,
    refresh = 0,
    refresh_violations = {},
    console = {},
    messages = {},
    dialogs = {},
    inputs = {},
    msgbox_answers = {},
    menus = {},
    menu_choices = {},
    gfx_keys = {},
    gfx_frames = 0,
    gfx_text = {},
    gfx_open = false,
    imgui_keys = {},
    imgui_checks = {},
    imgui_inputs = {},
    imgui_frames = 0,
    queue = {},
    scripts = {},
    errors = {},
    exec = {},
    missing = {},
    tick_times = {},
    max_tick = 0,
    items_added = 0, -- by AddMediaItemToTrack
    max_tick_items = 0, -- the most items one call (main chunk or deferred) added
    bytes_read = 0, -- through files the scripts opened
    max_tick_bytes = 0, -- the most bytes one call (main chunk or deferred) read
    peaks_calls = 0,
    resource = opts.resource or os.tmpname() .. "-res",
    media = opts.media,
    project_file = opts.project_file or "",
    sockets = opts.sockets ~= false,
    imgui = opts.imgui == true,
    os_name = opts.os_name or "Linux-x86_64",
    guid = 0,
    exec_env = opts.exec_env,
    -- Seconds added to time_precise: a spec moves the clock on instead of waiting.
    clock_offset = 0,
  }
  os.remove(model.resource)
  os.execute("mkdir -p '" .. model.resource .. "'")

  local R = {}
  model.reaper = setmetatable(R, {
    __index = function(_, k)
      model.missing[k] = true
      return nil
    end,
  })

  local function edit()
    model.edits = model.edits + 1
    if model.undo_depth == 0 then model.loose_edits = model.loose_edits + 1 end
  end

  local function alive_track(tr)
    for _, t in ipairs(model.tracks) do if t == tr then return true end end
    return false
  end
  local function alive_item(it)
    return it and it.track and alive_track(it.track) and (function()
      for _, x in ipairs(it.track.items) do if x == it then return true end end
      return false
    end)()
  end

  -- Sources ------------------------------------------------------------------------------------
  function model.file_source(path)
    local src = { kind = "source", file = path, type = "WAVE", length = 0, rate = 0, channels = 0 }
    local info = wav.info(path)
    if info then
      src.length = info.frames / info.rate
      src.rate = info.rate
      src.channels = info.channels
      src.frames = info.frames
    else
      src.offline = true
    end
    return src
  end
  function model.section_source(parent, offset, length, reversed)
    return { kind = "source", parent = parent, type = "SECTION", section = { offset, length, reversed or false },
      length = length > 0 and length or parent.length }
  end

  -- Project ------------------------------------------------------------------------------------
  function model.add_track(name, depth)
    model.guid = model.guid + 1
    local tr = { kind = "track", name = name or "", items = {}, info = {}, ext = {},
      guid = string.format("{00000000-0000-0000-0000-%012d}", model.guid) }
    for k, v in pairs(TRACK_KEYS) do tr.info[k] = v end
    tr.info.I_FOLDERDEPTH = depth or 0
    model.tracks[#model.tracks + 1] = tr
    return tr
  end

  -- spec: { position, length, file | source, startoffs, playrate, loop, selected, midi, name,
  --         section = {offset, length}, reversed, stretch_markers }
  function model.add_item(tr, spec)
    model.guid = model.guid + 1
    local item = { kind = "item", track = tr, takes = {}, info = {}, selected = spec.selected ~= false,
      guid = string.format("{00000000-0000-0000-0001-%012d}", model.guid) }
    for k, v in pairs(ITEM_KEYS) do item.info[k] = v end
    item.info.D_POSITION = spec.position or 0
    local take = { kind = "take", item = item, info = {}, ext = {}, name = spec.name or "",
      stretch = spec.stretch_markers or 0, guid = string.format("{00000000-0000-0000-0002-%012d}", model.guid) }
    for k, v in pairs(TAKE_KEYS) do take.info[k] = v end
    take.info.D_STARTOFFS = spec.startoffs or 0
    take.info.D_PLAYRATE = spec.playrate or 1
    local src
    if spec.midi then
      src = { kind = "source", type = "MIDI", length = spec.length or 4, midi = true }
      take.midi = true
    else
      src = spec.source or model.file_source(spec.file)
      if spec.section or spec.reversed then
        local sec = spec.section or { 0, 0 }
        src = model.section_source(src, sec[1], sec[2], spec.reversed)
      end
    end
    take.source = src
    item.info.D_LENGTH = spec.length or (src.length - take.info.D_STARTOFFS) / take.info.D_PLAYRATE
    item.info.B_LOOPSRC = spec.loop and 1 or 0
    item.takes[1] = take
    item.active = take
    tr.items[#tr.items + 1] = item
    return item, take
  end

  function model.track_index(tr)
    for i, t in ipairs(model.tracks) do if t == tr then return i end end
    return nil
  end

  function model.selected_items()
    local out = {}
    for _, tr in ipairs(model.tracks) do
      for _, it in ipairs(tr.items) do if it.selected then out[#out + 1] = it end end
    end
    return out
  end

  function model.find_track(name)
    for _, t in ipairs(model.tracks) do if t.name == name then return t end end
    return nil
  end

  function model.root_file(src)
    while src.parent do src = src.parent end
    return src.file
  end

  -- API: project and selection -----------------------------------------------------------------
  R.GetOS = function() return model.os_name end
  R.GetResourcePath = function() return model.resource end
  R.GetAppVersion = function() return "7.20/linux-x86_64" end
  R.RecursiveCreateDirectory = function(path)
    os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
    return 1
  end
  R.file_exists = function(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
  end
  -- REAPER's time_precise: a precise system timestamp in seconds (API reference), here moved on
  -- by clock_offset.
  R.time_precise = function() return now() + model.clock_offset end
  R.EnumerateFiles = function(path, idx)
    local names = {}
    local p = io.popen("ls -1A '" .. path:gsub("'", "'\\''") .. "' 2>/dev/null")
    for line in p:lines() do
      local f = io.open(path .. "/" .. line .. "/.", "rb")
      if f then f:close() else names[#names + 1] = line end
    end
    p:close()
    table.sort(names)
    return names[idx + 1]
  end
  R.GetProjectPath = function() return model.media or "" end
  R.EnumProjects = function(idx)
    if idx == -1 or idx == 0 then return "project0", model.project_file end
    return nil, ""
  end
  R.CountTracks = function() return #model.tracks end
  R.GetTrack = function(_, idx) return model.tracks[idx + 1] end
  R.CountSelectedMediaItems = function() return #model.selected_items() end
  R.GetSelectedMediaItem = function(_, idx) return model.selected_items()[idx + 1] end
  R.CountMediaItems = function()
    local n = 0
    for _, tr in ipairs(model.tracks) do n = n + #tr.items end
    return n
  end
  R.GetActiveTake = function(item) return item.active end
  R.TakeIsMIDI = function(take) return take.midi == true end
  R.GetMediaItem_Track = function(item) return item.track end
  R.GetMediaItemTake_Source = function(take) return take.source end
  R.GetMediaSourceParent = function(src) return src.parent end
  R.GetMediaSourceType = function(src) return src.type end
  R.PCM_Source_GetSectionInfo = function(src)
    if src.section then return true, src.section[1], src.section[2], src.section[3] end
    return false, 0, src.length, false
  end
  R.GetMediaSourceFileName = function(src) return src.file or "" end
  R.GetMediaSourceLength = function(src) return src.length, false end
  R.GetMediaSourceSampleRate = function(src) return src.rate or 0 end
  R.GetMediaSourceNumChannels = function(src) return src.channels or 0 end
  R.GetTakeNumStretchMarkers = function(take) return take.stretch or 0 end
  R.GetSet_LoopTimeRange2 = function(_, is_set, _, a, b)
    if is_set then model.time_sel = { a, b } end
    return model.time_sel[1], model.time_sel[2]
  end
  R.ValidatePtr2 = function(_, ptr, kind)
    if type(ptr) ~= "table" then return false end
    if kind == "MediaTrack*" then return ptr.kind == "track" and alive_track(ptr) end
    if kind == "MediaItem*" then return ptr.kind == "item" and alive_item(ptr) end
    if kind == "MediaItem_Take*" then return ptr.kind == "take" and not ptr.dead and alive_item(ptr.item) end
    if kind == "PCM_source*" then return ptr.kind == "source" and not ptr.dead end
    error("ValidatePtr2: unknown type " .. tostring(kind))
  end

  -- Values -------------------------------------------------------------------------------------
  local function get_value(obj, keys, key, what)
    if keys[key] == nil then error(what .. ": unknown parameter " .. tostring(key), 3) end
    return obj.info[key]
  end
  local function set_value(obj, keys, key, value, what)
    if keys[key] == nil then error(what .. ": unknown parameter " .. tostring(key), 3) end
    if type(value) ~= "number" or value ~= value then error(what .. ": " .. key .. " needs a number", 3) end
    obj.info[key] = value
    edit()
    return true
  end
  R.GetMediaItemInfo_Value = function(item, key)
    assert(item and item.kind == "item", "GetMediaItemInfo_Value: not an item")
    return get_value(item, ITEM_KEYS, key, "GetMediaItemInfo_Value")
  end
  R.SetMediaItemInfo_Value = function(item, key, v)
    assert(item and item.kind == "item", "SetMediaItemInfo_Value: not an item")
    if key == "B_UISEL" then item.selected = v ~= 0 end
    return set_value(item, ITEM_KEYS, key, v, "SetMediaItemInfo_Value")
  end
  R.GetMediaItemTakeInfo_Value = function(take, key)
    assert(take and take.kind == "take", "GetMediaItemTakeInfo_Value: not a take")
    return get_value(take, TAKE_KEYS, key, "GetMediaItemTakeInfo_Value")
  end
  R.SetMediaItemTakeInfo_Value = function(take, key, v)
    assert(take and take.kind == "take", "SetMediaItemTakeInfo_Value: not a take")
    if key == "D_PLAYRATE" and v <= 0 then error("playrate must be > 0") end
    return set_value(take, TAKE_KEYS, key, v, "SetMediaItemTakeInfo_Value")
  end
  R.GetMediaTrackInfo_Value = function(tr, key)
    assert(tr and tr.kind == "track", "GetMediaTrackInfo_Value: not a track")
    if key == "IP_TRACKNUMBER" then return model.track_index(tr) or 0 end
    return get_value(tr, TRACK_KEYS, key, "GetMediaTrackInfo_Value")
  end
  R.SetMediaTrackInfo_Value = function(tr, key, v)
    assert(tr and tr.kind == "track", "SetMediaTrackInfo_Value: not a track")
    return set_value(tr, TRACK_KEYS, key, v, "SetMediaTrackInfo_Value")
  end
  local function string_attr(obj, key, value, set, name_field)
    if key == "P_NAME" then
      if set then obj[name_field] = value edit() end
      return true, obj[name_field]
    end
    local ext = key:match("^P_EXT:(.+)$")
    if ext then
      if set then obj.ext[ext] = value edit() end
      return true, obj.ext[ext] or ""
    end
    if key == "GUID" then return true, model.guid_of(obj) end
    error("unknown string attribute " .. key, 3)
  end
  R.GetSetMediaTrackInfo_String = function(tr, key, value, set)
    assert(tr and tr.kind == "track", "GetSetMediaTrackInfo_String: not a track")
    return string_attr(tr, key, value, set, "name")
  end
  R.GetSetMediaItemTakeInfo_String = function(take, key, value, set)
    assert(take and take.kind == "take", "GetSetMediaItemTakeInfo_String: not a take")
    return string_attr(take, key, value, set, "name")
  end
  R.GetTrackGUID = function(tr) return tr.guid end
  -- GetSetMediaItemInfo_String(item, parmname, value, set) -> ok, value (only GUID is modelled).
  R.GetSetMediaItemInfo_String = function(item, key, _, set)
    assert(item and item.kind == "item", "GetSetMediaItemInfo_String: not an item")
    if key ~= "GUID" or set then error("GetSetMediaItemInfo_String: the model reads GUID only", 2) end
    return true, item.guid
  end
  R.GetMediaItem = function(_, idx)
    local n = 0
    for _, tr in ipairs(model.tracks) do
      for _, it in ipairs(tr.items) do
        if n == idx then return it end
        n = n + 1
      end
    end
    return nil
  end

  -- Editing ------------------------------------------------------------------------------------
  R.InsertTrackAtIndex = function(idx, _)
    if idx < 0 or idx > #model.tracks then error("InsertTrackAtIndex: index out of range") end
    model.guid = model.guid + 1
    local tr = { kind = "track", name = "", items = {}, info = {}, ext = {},
      guid = string.format("{00000000-0000-0000-0000-%012d}", model.guid) }
    for k, v in pairs(TRACK_KEYS) do tr.info[k] = v end
    table.insert(model.tracks, idx + 1, tr)
    edit()
  end
  R.AddMediaItemToTrack = function(tr)
    assert(tr and tr.kind == "track" and alive_track(tr), "AddMediaItemToTrack: not a track")
    model.guid = model.guid + 1
    local item = { kind = "item", track = tr, takes = {}, info = {}, selected = false,
      guid = string.format("{00000000-0000-0000-0001-%012d}", model.guid) }
    for k, v in pairs(ITEM_KEYS) do item.info[k] = v end
    tr.items[#tr.items + 1] = item
    model.items_added = model.items_added + 1
    edit()
    return item
  end
  R.DeleteTrack = function(tr)
    assert(tr and tr.kind == "track" and alive_track(tr), "DeleteTrack: not a track")
    table.remove(model.tracks, model.track_index(tr))
    edit()
  end
  R.DeleteTrackMediaItem = function(tr, item)
    assert(tr and tr.kind == "track" and alive_track(tr), "DeleteTrackMediaItem: not a track")
    for i, x in ipairs(tr.items) do
      if x == item then
        table.remove(tr.items, i)
        edit()
        return true
      end
    end
    return false
  end
  R.AddTakeToMediaItem = function(item)
    model.guid = model.guid + 1
    local take = { kind = "take", item = item, info = {}, ext = {}, name = "", stretch = 0,
      guid = string.format("{00000000-0000-0000-0002-%012d}", model.guid) }
    for k, v in pairs(TAKE_KEYS) do take.info[k] = v end
    item.takes[#item.takes + 1] = take
    item.active = item.active or take
    edit()
    return take
  end
  R.PCM_Source_CreateFromFile = function(path)
    return model.file_source(path)
  end
  R.SetMediaItemTake_Source = function(take, src)
    assert(src and src.kind == "source", "SetMediaItemTake_Source: not a source")
    if take.dead or src.dead then error("SetMediaItemTake_Source: a take or source REAPER has freed", 2) end
    take.source = src
    edit()
    return true
  end
  R.PCM_Source_BuildPeaks = function(src, mode)
    assert(src and src.kind == "source", "PCM_Source_BuildPeaks: not a source")
    if src.dead then error("PCM_Source_BuildPeaks: a source REAPER has freed (its take was made anew)", 2) end
    model.peaks_calls = model.peaks_calls + 1
    src.peaks_state = src.peaks_state or 0
    if mode == 0 then
      src.peaks_pending = 3
      return 1
    elseif mode == 1 then
      src.peaks_pending = (src.peaks_pending or 0) - 1
      return src.peaks_pending > 0 and 1 or 0
    else
      src.peaks_built = true
      return 0
    end
  end
  -- Takes, item GUIDs and extension data, take FX (stems as takes; re-separation) --------------
  -- From REAPER's ReaScript API reference (reascripthelp): GetSetMediaItemInfo_String keys
  -- "GUID" (16-byte GUID, query or update) and "P_EXT:xyz" (extension-specific persistent data);
  -- CountTakes(item), GetTake(item, takeidx), GetMediaItemTake_Item(take); SetActiveTake(take)
  -- "set this take active in this media item"; AddTakeToMediaItem "creates a new take in an item"
  -- (the model leaves the active take as it was: scripts that care call SetActiveTake);
  -- CountTrackMediaItems(track), GetTrackMediaItem(tr, itemidx); TakeFX_GetCount(take).
  -- GUIDs are made on first use (every object has one in REAPER; only their identity matters).
  function model.guid_of(obj)
    if not obj.guid then
      model.guid = model.guid + 1
      obj.guid = string.format("{00000000-0000-0000-%04d-%012d}", obj.kind == "take" and 2 or 1, model.guid)
    end
    return obj.guid
  end
  R.GetSetMediaItemInfo_String = function(item, key, value, set)
    assert(item and item.kind == "item", "GetSetMediaItemInfo_String: not an item")
    item.ext = item.ext or {}
    if key == "GUID" then return true, model.guid_of(item) end
    local ext = key:match("^P_EXT:(.+)$")
    if not ext then error("GetSetMediaItemInfo_String: unknown attribute " .. key, 2) end
    if set then item.ext[ext] = value edit() end
    return true, item.ext[ext] or ""
  end
  R.CountTakes = function(item)
    assert(item and item.kind == "item", "CountTakes: not an item")
    return #item.takes
  end
  R.GetTake = function(item, idx) return item.takes[idx + 1] end
  R.GetMediaItemTake_Item = function(take) return take.item end
  R.SetActiveTake = function(take)
    assert(take and take.kind == "take", "SetActiveTake: not a take")
    take.item.active = take
    edit()
  end
  R.CountTrackMediaItems = function(tr)
    assert(tr and tr.kind == "track", "CountTrackMediaItems: not a track")
    return #tr.items
  end
  R.GetTrackMediaItem = function(tr, idx) return tr.items[idx + 1] end
  R.TakeFX_GetCount = function(take) return take.fx or 0 end
  -- A take added by hand (a test's take lane): spec as model.add_item's file/source/startoffs/playrate.
  function model.add_take(item, spec)
    local take = R.AddTakeToMediaItem(item)
    take.source = spec.source or model.file_source(spec.file)
    take.name = spec.name or ""
    take.info.D_STARTOFFS = spec.startoffs or 0
    take.info.D_PLAYRATE = spec.playrate or 1
    return take
  end

  -- The user's Item > Duplicate items (REAPER's action 41295): a copy of the item on its track
  -- with every take, its values and its P_EXT extension data (saved in the item's chunk and
  -- copied with it), but GUIDs of its own for the item and each take.
  function model.duplicate_item(item, position)
    local copy = { kind = "item", track = item.track, takes = {}, info = {}, selected = false,
      ext = {} }
    for k, v in pairs(item.info) do copy.info[k] = v end
    for k, v in pairs(item.ext or {}) do copy.ext[k] = v end
    copy.info.D_POSITION = position or item.info.D_POSITION + item.info.D_LENGTH
    for i, tk in ipairs(item.takes) do
      local t = { kind = "take", item = copy, info = {}, ext = {}, name = tk.name, stretch = tk.stretch,
        source = tk.source, midi = tk.midi, fx = tk.fx }
      for k, v in pairs(tk.info) do t.info[k] = v end
      for k, v in pairs(tk.ext) do t.ext[k] = v end
      copy.takes[i] = t
      if item.active == tk then copy.active = t end
    end
    model.guid_of(copy)
    for _, t in ipairs(copy.takes) do model.guid_of(t) end
    item.track.items[#item.track.items + 1] = copy
    edit()
    return copy
  end

  -- Take envelopes and item state chunks. reascripthelp: GetTakeEnvelopeByName(take, envname)
  -- ("Volume", "Pan", "Mute", ...; nil when the take has none), GetEnvelopeStateChunk(env, str,
  -- isundo), GetItemStateChunk(item, str, isundo) / SetItemStateChunk(item, str, isundo). There is
  -- no call that creates a take envelope: scripts write it into the item's chunk, where (as in a
  -- saved .rpp) each take's envelopes follow its <SOURCE> block as <VOLENV>, <PANENV>, <MUTEENV>,
  -- and every take after the first starts with a TAKE line (TAKE SEL: the active one). The
  -- model's chunk holds the parts it keeps; SetItemStateChunk takes envelope changes only and
  -- raises on any other difference, so a script that damages the rest of a chunk fails.
  local ENV_BLOCKS = { Volume = "VOLENV", Pan = "PANENV", Mute = "MUTEENV" }
  local ENV_ORDER = { "Volume", "Pan", "Mute" }
  local ENV_NAME = { VOLENV = "Volume", PANENV = "Pan", MUTEENV = "Mute" }
  -- A test's take envelope: points = { { time, value }, ... } (take time, seconds).
  function model.add_take_envelope(take, name, points)
    local lines = { "<" .. ENV_BLOCKS[name], "EGUID " .. model.guid_of({ kind = "envelope" }), "ACT 1 -1",
      "VIS 1 1 1", "LANEHEIGHT 0 0", "ARM 0", "DEFSHAPE 0 -1 -1" }
    if name == "Volume" then lines[#lines + 1] = "VOLTYPE 1" end
    for _, p in ipairs(points) do lines[#lines + 1] = string.format("PT %.14g %.14g 0", p[1], p[2]) end
    lines[#lines + 1] = ">"
    take.envs = take.envs or {}
    take.envs[name] = { kind = "envelope", take = take, name = name, chunk = table.concat(lines, "\n") }
    return take.envs[name]
  end
  -- An envelope's points { { time, value }, ... } read back from its chunk.
  function model.envelope_points(env)
    local out = {}
    for t, v in env.chunk:gmatch("\nPT ([^ \n]+) ([^ \n]+)") do out[#out + 1] = { tonumber(t), tonumber(v) } end
    return out
  end
  R.GetTakeEnvelopeByName = function(take, name)
    assert(take and take.kind == "take", "GetTakeEnvelopeByName: not a take")
    return take.envs and take.envs[name] or nil
  end
  R.GetEnvelopeStateChunk = function(env)
    assert(env and env.kind == "envelope", "GetEnvelopeStateChunk: not an envelope")
    return true, env.chunk
  end
  local function root_path(src)
    while src and src.parent do src = src.parent end
    return src and src.file or ""
  end
  local function item_chunk(item, with_envs)
    local lines = { "<ITEM", string.format("POSITION %.14g", item.info.D_POSITION),
      string.format("LENGTH %.14g", item.info.D_LENGTH), "IGUID " .. model.guid_of(item) }
    for k, take in ipairs(item.takes) do
      if k > 1 then lines[#lines + 1] = item.active == take and "TAKE SEL" or "TAKE" end
      lines[#lines + 1] = string.format("NAME %q", take.name or "")
      lines[#lines + 1] = "GUID " .. model.guid_of(take)
      lines[#lines + 1] = "<SOURCE " .. tostring(take.source and take.source.type or "EMPTY")
      lines[#lines + 1] = string.format("FILE %q", root_path(take.source))
      lines[#lines + 1] = ">"
      for _, name in ipairs(ENV_ORDER) do
        local env = with_envs and take.envs and take.envs[name]
        if env then lines[#lines + 1] = env.chunk end
      end
    end
    lines[#lines + 1] = ">"
    return table.concat(lines, "\n")
  end
  R.GetItemStateChunk = function(item)
    assert(item and item.kind == "item", "GetItemStateChunk: not an item")
    return true, item_chunk(item, true)
  end
  R.SetItemStateChunk = function(item, chunk)
    assert(item and item.kind == "item", "SetItemStateChunk: not an item")
    local rest, envs, take, depth, block = {}, { {} }, 1, 0, nil
    for line in (chunk .. "\n"):gmatch("(.-)\r?\n") do
      local l = line:match("^%s*(.-)%s*$")
      if block then
        block[#block + 1] = l
        if l:sub(1, 1) == "<" then depth = depth + 1 elseif l == ">" then depth = depth - 1 end
        if depth == 1 then
          envs[take][block.name] = table.concat(block, "\n")
          block = nil
        end
      elseif depth == 1 and ENV_NAME[l:match("^<(%u+)") or ""] then
        block = { l, name = ENV_NAME[l:match("^<(%u+)")] }
        depth = 2
      else
        if depth == 1 and l:match("^TAKE") then
          take = take + 1
          envs[take] = {}
        end
        if l:sub(1, 1) == "<" then depth = depth + 1 elseif l == ">" then depth = depth - 1 end
        if l ~= "" then rest[#rest + 1] = l end
      end
    end
    if table.concat(rest, "\n") ~= item_chunk(item, false) then
      error("SetItemStateChunk: the model takes changes to take envelopes only; the rest of the chunk differs:\n"
        .. table.concat(rest, "\n"), 2)
    end
    -- REAPER makes the item's takes (and their sources) anew from the chunk: the old take and
    -- source pointers are freed (ValidatePtr2 false; BuildPeaks and SetMediaItemTake_Source on
    -- them raise here, where REAPER could crash). The new ones keep the chunk's GUIDs and values.
    local function renew_source(src)
      if not src then return nil end
      local copy = {}
      for k, v in pairs(src) do copy[k] = v end
      copy.parent = renew_source(src.parent)
      src.dead = true
      return copy
    end
    for k, old in ipairs(item.takes) do
      local tk = {}
      for key, v in pairs(old) do tk[key] = v end
      tk.source = renew_source(old.source)
      old.dead = true
      item.takes[k] = tk
      if item.active == old then item.active = tk end
    end
    for k, tk in ipairs(item.takes) do
      tk.envs = {}
      for name, text in pairs(envs[k] or {}) do
        tk.envs[name] = { kind = "envelope", take = tk, name = name, chunk = text }
      end
    end
    edit()
    return true
  end

  -- Blocks nest as in REAPER: only the outermost one makes an undo point (with its description).
  R.Undo_BeginBlock = function()
    if model.undo_depth == 0 then model.block_start_edits = model.edits end
    model.undo_depth = model.undo_depth + 1
  end
  R.Undo_BeginBlock2 = R.Undo_BeginBlock
  R.Undo_EndBlock = function(desc, flags)
    if model.undo_depth <= 0 then error("Undo_EndBlock without Undo_BeginBlock") end
    model.undo_depth = model.undo_depth - 1
    if model.undo_depth == 0 then
      model.undo[#model.undo + 1] = { desc = desc, flags = flags, edits = model.edits - (model.block_start_edits or 0),
        at = model.edits, loose_at = model.loose_edits }
    end
  end
  R.Undo_EndBlock2 = function(_, desc, flags) return R.Undo_EndBlock(desc, flags) end
  -- Undo_OnStateChangeEx(desc, whichStates, trackparm) (REAPER's API reference): makes an undo
  -- point now. REAPER's undo history is a list of project states, so the point holds every
  -- change since the previous point, made in or out of blocks: the loose edits since then are
  -- covered. (Inside an open block REAPER folds it into the block; the model treats that as an
  -- error in the script.)
  R.Undo_OnStateChangeEx = function(desc, which, trackparm)
    if model.undo_depth ~= 0 then error("Undo_OnStateChangeEx inside an undo block") end
    local last = model.undo[#model.undo]
    local since = last and last.at or 0
    model.loose_edits = last and last.loose_at or 0
    model.undo[#model.undo + 1] = { desc = desc, flags = which, trackparm = trackparm,
      edits = model.edits - since, at = model.edits, loose_at = model.loose_edits }
  end
  R.Undo_OnStateChangeEx2 = function(_, desc, which, trackparm)
    return R.Undo_OnStateChangeEx(desc, which, trackparm)
  end
  R.PreventUIRefresh = function(n)
    model.refresh = model.refresh + n
    if model.refresh < 0 then error("PreventUIRefresh went negative") end
  end
  R.UpdateArrange = function() model.arrange_updates = (model.arrange_updates or 0) + 1 end
  R.UpdateTimeline = R.UpdateArrange

  -- ExtState -----------------------------------------------------------------------------------
  local function ek(section, key) return section .. "\0" .. key end
  R.SetExtState = function(section, key, value, persist)
    assert(type(value) == "string", "SetExtState needs a string value")
    model.ext[ek(section, key)] = value
    if persist then model.ext_persist[ek(section, key)] = true end
  end
  R.GetExtState = function(section, key) return model.ext[ek(section, key)] or "" end
  R.HasExtState = function(section, key) return model.ext[ek(section, key)] ~= nil end
  R.DeleteExtState = function(section, key) model.ext[ek(section, key)] = nil end
  function model.set_setting(key, value) R.SetExtState("ReaSAM", key, tostring(value), true) end
  -- Project ExtState (saved with the project): SetProjExtState(proj, section, key, value) with an
  -- empty value deletes the key; GetProjExtState -> size, value; EnumProjExtState -> ok, key, value.
  model.proj_ext = {}
  R.SetProjExtState = function(_, section, key, value)
    assert(type(value) == "string", "SetProjExtState needs a string value")
    model.proj_ext[section] = model.proj_ext[section] or {}
    model.proj_ext[section][key] = value ~= "" and value or nil
    return #value
  end
  R.GetProjExtState = function(_, section, key)
    local v = (model.proj_ext[section] or {})[key] or ""
    return #v, v
  end
  R.EnumProjExtState = function(_, section, idx)
    local keys = {}
    for k in pairs(model.proj_ext[section] or {}) do keys[#keys + 1] = k end
    table.sort(keys)
    local k = keys[idx + 1]
    if not k then return false, "", "" end
    return true, k, model.proj_ext[section][k]
  end

  -- Dialogs and console ------------------------------------------------------------------------
  R.ShowConsoleMsg = function(msg) model.console[#model.console + 1] = msg end
  R.ClearConsole = function() end
  R.ShowMessageBox = function(msg, title, kind)
    model.messages[#model.messages + 1] = { msg = msg, title = title, kind = kind }
    local answer = table.remove(model.msgbox_answers, 1)
    if answer then return answer end
    if kind == 4 or kind == 3 then return 7 end -- No
    return 1
  end
  R.GetUserInputs = function(title, n, captions, defaults)
    model.dialogs[#model.dialogs + 1] = { title = title, n = n, captions = captions, defaults = defaults }
    local answer = table.remove(model.inputs, 1)
    if answer == nil then error("GetUserInputs '" .. title .. "' shown but the test gave no answer") end
    if type(answer) == "function" then return answer(title, n, captions, defaults) end
    return answer[1], answer[2]
  end
  R.GetMousePosition = function() return 100, 100 end
  -- Windows' RGB() layout (0x00BBGGRR); macOS and Linux (SWELL) put red in the high byte.
  R.ColorToNative = function(r, g, b)
    if model.os_name:match("^Win") then return r | (g << 8) | (b << 16) end
    return (r << 16) | (g << 8) | b
  end
  function model.console_text() return table.concat(model.console) end

  -- Processes: ExecProcess really runs them ------------------------------------------------------
  R.ExecProcess = function(cmd, timeout)
    model.exec[#model.exec + 1] = { cmd = cmd, timeout = timeout }
    -- REAPER's own environment, as the test wants it (e.g. where a started daemon keeps state).
    if model.exec_env then cmd = "env " .. model.exec_env .. " " .. cmd end
    if timeout < 0 then
      os.execute(cmd .. " >/dev/null 2>&1 &")
      return ""
    end
    -- A timeout >= 0 waits for the command (0: forever): REAPER's UI stands still meanwhile.
    -- Recorded like os.execute / io.popen; a spec that means it sets model.allow_blocking_exec.
    if not model.allow_blocking_exec then
      model.blocking_calls[#model.blocking_calls + 1] = "ExecProcess(timeout " .. tostring(timeout) .. ")"
    end
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    local _, _, code = p:close()
    return tostring(code or 0) .. "\n" .. out
  end

  -- gfx ----------------------------------------------------------------------------------------
  -- Mouse: model.gfx_clicks = { { x, y }, ... }: each press shows in gfx.mouse_x/y/cap at one
  -- gfx.getchar call and is released at the next; a test scrolls by setting gfx.mouse_wheel
  -- (REAPER adds 120 per notch up; the script resets it). gfx.dock(v) sets the dock state, (-1) reads it.
  local gfx = { w = 0, h = 0, x = 0, y = 0, mouse_x = 0, mouse_y = 0, mouse_cap = 0, mouse_wheel = 0 }
  model.gfx = gfx
  model.gfx_clicks = {}
  model.gfx_dock = 0
  function gfx.init(name, w, h, dock)
    model.gfx_open = true
    model.gfx_title = name
    model.gfx_dock = dock or 0
    gfx.w, gfx.h = w or 0, h or 0
    return 1
  end
  function gfx.dock(v)
    if v ~= -1 then model.gfx_dock = v end
    return model.gfx_dock
  end
  function gfx.quit() model.gfx_open = false end
  function gfx.set() end
  function gfx.rect() end
  function gfx.setfont() end
  function gfx.drawstr(s) model.frame_text[#model.frame_text + 1] = s end
  function gfx.update()
    model.gfx_frames = model.gfx_frames + 1
    model.gfx_text = model.frame_text
    model.frame_text = {}
  end
  function gfx.getchar()
    if not model.gfx_open then return -1 end
    if gfx.mouse_cap ~= 0 then
      gfx.mouse_cap = 0
    elseif #model.gfx_clicks > 0 then
      local click = table.remove(model.gfx_clicks, 1)
      gfx.mouse_x, gfx.mouse_y, gfx.mouse_cap = click[1], click[2], 1
    end
    local k = table.remove(model.gfx_keys, 1)
    if k == -1 then model.gfx_open = false end
    return k or 0
  end
  function gfx.showmenu(menu)
    model.menus[#model.menus + 1] = menu
    local c = table.remove(model.menu_choices, 1)
    if c == nil then error("gfx.showmenu shown but the test gave no choice") end
    return c
  end
  model.frame_text = {}

  -- ReaImGui (only when asked for) ----------------------------------------------------------------
  -- The pinned API the scripts load as ReaImGui documents it (shims/imgui.lua of
  -- github.com/cfillion/reaimgui):
  --   package.path = reaper.ImGui_GetBuiltinPath() .. '/?.lua'; local ImGui = require 'imgui' '0.9'
  -- The table has the functions without their ImGui_ prefix and the enums as values, and (like the
  -- real one's metatable) raises on a name it lacks. Signatures and return values follow api/*.cpp
  -- there: Begin(ctx, name, p_open, flags) -> visible, p_open (End only when visible);
  -- Button/SmallButton(ctx, label) -> pressed; Checkbox(ctx, label, v) -> changed, v;
  -- InputText(ctx, label, buf, flags) -> changed, buf; BeginTable(ctx, id, columns, flags) -> bool
  -- (EndTable only when true); TableNextColumn -> bool; CollapsingHeader(ctx, label, p_visible,
  -- flags) -> open; ProgressBar(ctx, fraction, w, h, overlay); GetWindowDockID -> int.
  -- Answers come from the test: model.imgui_clicks[label] = true presses that button once (else a
  -- button takes "button" from model.imgui_keys, for the one-button windows); imgui_checks and
  -- imgui_inputs by label; model.imgui_close closes the window; model.imgui_dock is its dock id.
  if model.imgui then
    model.imgui_clicks = {}
    model.imgui_builtin = model.resource .. "/imgui-builtin"
    os.execute("mkdir -p '" .. model.imgui_builtin .. "'")
    local f = assert(io.open(model.imgui_builtin .. "/imgui.lua", "w"))
    f:write("-- The REAPER model's stand-in for ReaImGui's shims/imgui.lua.\n",
      "return function(api_version) return reaper.ImGui__model(api_version) end\n")
    f:close()
    local im = {}
    local depth = { window = 0, table = 0 }
    local function text(s) model.imgui_text[#model.imgui_text + 1] = tostring(s) end
    local function clicked(label)
      if model.imgui_clicks[label] then
        model.imgui_clicks[label] = nil
        return true
      end
      if model.imgui_keys[1] == "button" then return table.remove(model.imgui_keys, 1) == "button" end
      return false
    end
    im.CreateContext = function(label, flags)
      assert(type(label) == "string", "CreateContext(label, config_flags)")
      return { label = label, flags = flags }
    end
    im.Cond_FirstUseEver = function() return 4 end
    im.Cond_Once = function() return 2 end
    im.Key_Escape = function() return 512 + 14 end
    im.TableFlags_Borders = function() return 1920 end
    im.TableFlags_RowBg = function() return 64 end
    im.TableFlags_Resizable = function() return 1 end
    im.TableFlags_ScrollY = function() return 33554432 end
    im.TableColumnFlags_WidthStretch = function() return 8 end
    im.TableColumnFlags_WidthFixed = function() return 16 end
    im.WindowFlags_None = function() return 0 end
    im.InputTextFlags_EnterReturnsTrue = function() return 32 end
    im.SetNextWindowSize = function(ctx, w, h) assert(ctx and w and h, "SetNextWindowSize(ctx, w, h, cond)") end
    im.SetNextWindowDockID = function(ctx, id)
      assert(ctx and math.type(id) == "integer", "SetNextWindowDockID(ctx, dock_id, cond)")
      model.imgui_next_dock = id
    end
    im.Begin = function(ctx, name, p_open)
      assert(ctx and type(name) == "string", "Begin(ctx, name, p_open, flags)")
      if depth.window ~= 0 then error("Begin: the previous window was not ended") end
      model.imgui_frames = model.imgui_frames + 1
      model.imgui_text = {}
      model.imgui_window = name
      if model.imgui_next_dock then model.imgui_dock, model.imgui_next_dock = model.imgui_next_dock, nil end
      depth.window = 1
      local open = p_open
      if p_open and model.imgui_close then
        model.imgui_close = nil
        open = false
      end
      return true, open
    end
    im.End = function()
      if depth.window ~= 1 then error("End without a visible Begin") end
      if depth.table ~= 0 then error("End inside a table") end
      depth.window = 0
    end
    im.GetWindowDockID = function() return model.imgui_dock or 0 end
    im.IsWindowDocked = function() return (model.imgui_dock or 0) ~= 0 end
    im.Text = function(_, s) text(s) end
    im.TextWrapped = im.Text
    im.TextDisabled = im.Text
    im.SameLine = function() end
    im.Separator = function() end
    im.PushID = function() end
    im.PopID = function() end
    im.ProgressBar = function(_, fraction, _, _, overlay)
      assert(type(fraction) == "number", "ProgressBar(ctx, fraction, w, h, overlay)")
      text(overlay or "")
    end
    im.Button = function(_, label)
      text("[" .. label .. "]")
      return clicked(label)
    end
    im.SmallButton = im.Button
    im.IsKeyPressed = function(_, key)
      assert(math.type(key) == "integer", "IsKeyPressed(ctx, key, repeat)")
      if model.imgui_keys[1] == "esc" then return table.remove(model.imgui_keys, 1) == "esc" end
      return false
    end
    im.CollapsingHeader = function(_, label)
      text("> " .. label)
      return (model.imgui_headers or {})[label] == true
    end
    im.BeginTable = function(_, id, columns)
      assert(type(id) == "string" and math.type(columns) == "integer", "BeginTable(ctx, str_id, columns, flags)")
      depth.table = depth.table + 1
      return true
    end
    im.EndTable = function()
      if depth.table < 1 then error("EndTable without BeginTable") end
      depth.table = depth.table - 1
    end
    im.TableSetupColumn = function(_, label) assert(type(label) == "string") end
    im.TableHeadersRow = function() end
    im.TableNextRow = function() end
    im.TableNextColumn = function() return true end
    -- Checkbox and InputText answer from model.imgui_checks / model.imgui_inputs (by label), once.
    im.Checkbox = function(_, label, v)
      assert(type(v) == "boolean", "Checkbox(ctx, label, v)")
      local want = model.imgui_checks[label]
      if want == nil or want == v then return false, v end
      model.imgui_checks[label] = nil
      return true, want
    end
    im.InputText = function(_, label, buf)
      assert(type(buf) == "string", "InputText(ctx, label, buf, flags)")
      local want = model.imgui_inputs[label]
      if want == nil then return false, buf end
      model.imgui_inputs[label] = nil
      return true, want
    end
    R.ImGui_GetBuiltinPath = function() return model.imgui_builtin end
    R.ImGui__model = function(api_version)
      if api_version ~= "0.9" and api_version ~= "0.10" then
        error("ImGui: API version " .. tostring(api_version) .. " is not available", 2)
      end
      local out = {}
      for name, fn in pairs(im) do
        out[name] = name:find("_", 1, true) and fn() or fn -- enums (Key_Escape) are values
      end
      return setmetatable(out, { __index = function(_, key)
        error(("attempt to access a nil value (field '%s')"):format(key), 2)
      end })
    end
  end

  -- Scripts and the defer driver ---------------------------------------------------------------
  -- What a script sees of os and io: everything, except the calls that would freeze REAPER
  -- (os.execute, io.popen wait for the command) or quit it (os.exit). They raise, so a spec
  -- fails on the first blocking call; file I/O (io.open, os.remove, ...) stays.
  local function forbid(name, why)
    return function()
      model.blocking_calls[#model.blocking_calls + 1] = name
      error(name .. " " .. why .. " in REAPER: use reaper.ExecProcess(cmd, -1)", 2)
    end
  end
  model.blocking_calls = {}
  local script_os = setmetatable({
    execute = forbid("os.execute", "blocks the UI until the command ends"),
    exit = forbid("os.exit", "quits REAPER"),
  }, { __index = os })
  -- Files a script opens count the bytes it reads (model.bytes_read; model.max_tick_bytes is the
  -- most one call read), so a spec can bound a tick's work without timing it.
  local function counted_file(f)
    local file = {}
    local function count(...)
      for i = 1, select("#", ...) do
        local v = select(i, ...)
        if type(v) == "string" then model.bytes_read = model.bytes_read + #v end
      end
      return ...
    end
    function file.read(_, ...) return count(f:read(...)) end
    function file.lines(_, ...)
      local it = f:lines(...)
      return function() return count(it()) end
    end
    return setmetatable(file, {
      __index = function(_, k)
        local v = f[k]
        if type(v) ~= "function" then return v end
        return function(_, ...) return v(f, ...) end
      end,
      __close = function() f:close() end,
    })
  end
  local script_io = setmetatable({
    popen = forbid("io.popen", "blocks the UI until the command ends"),
    open = function(...)
      local f, err, code = io.open(...)
      if not f then return f, err, code end
      return counted_file(f)
    end,
    close = function(f)
      if f == nil then return io.close() end
      return f:close()
    end,
    type = function(f)
      if type(f) == "table" and getmetatable(f) and f.seek then return "file" end
      return io.type(f)
    end,
  }, { __index = io })

  -- LuaSocket as a script sees it: the real module, with every call that can wait recorded in
  -- model.blocking_calls (REAPER's UI stands still meanwhile): a receive or accept on a socket
  -- whose timeout is not 0, socket.sleep, socket.select with a timeout other than 0. A wait uses
  -- no CPU time, so only counting the calls catches it; a busy machine cannot change the count.
  local script_socket
  local function socket_for_scripts()
    if script_socket then return script_socket end
    local real = require("socket")
    local function blocking(what) model.blocking_calls[#model.blocking_calls + 1] = what end
    local WAITS = { receive = true, receivefrom = true, accept = true }
    local function wrap(obj)
      local timeout = -1 -- LuaSocket's default: wait forever
      local proxy = {}
      return setmetatable(proxy, {
        __index = function(_, k)
          local v = obj[k]
          if type(v) ~= "function" then return v end
          return function(self, ...)
            if self == proxy then self = obj end
            if k == "settimeout" then timeout = tonumber((...)) or -1 end
            if WAITS[k] and timeout ~= 0 then blocking(("socket:%s (timeout %s)"):format(k, timeout)) end
            return v(self, ...)
          end
        end,
      })
    end
    script_socket = setmetatable({
      sleep = function(t)
        if (tonumber(t) or 0) > 0 then blocking("socket.sleep(" .. tostring(t) .. ")") end
        return real.sleep(t)
      end,
      select = function(r, w, t)
        if t == nil or t ~= 0 then blocking("socket.select(timeout " .. tostring(t) .. ")") end
        return real.select(r, w, t)
      end,
    }, { __index = real })
    for _, name in ipairs({ "udp", "udp4", "udp6", "tcp", "tcp4", "tcp6" }) do
      if real[name] then
        script_socket[name] = function(...)
          local obj, err = real[name](...)
          if not obj then return obj, err end
          return wrap(obj)
        end
      end
    end
    return script_socket
  end

  -- A script's environment: its own `reaper` proxy (defer/atexit/get_action_context bound to
  -- the script), its own package table and require cache, and the os/io above.
  function model.new_env(path)
    local script = { path = path, atexits = {}, alive = true, pending = 0, errors = {} }
    local proxy = setmetatable({}, { __index = R })
    proxy.defer = function(fn)
      assert(type(fn) == "function", "defer needs a function")
      script.pending = script.pending + 1
      model.queue[#model.queue + 1] = { script = script, fn = fn }
    end
    proxy.atexit = function(fn) script.atexits[#script.atexits + 1] = fn end
    proxy.get_action_context = function() return false, path, 0, 0, -1, -1, -1, "" end
    local pkg = setmetatable({ path = package.path, cpath = package.cpath, loaded = {} }, { __index = package })
    local env = setmetatable({ reaper = proxy, gfx = gfx, package = pkg, os = script_os, io = script_io },
      { __index = _G })
    env._G = env
    env.require = function(name)
      if pkg.loaded[name] ~= nil then return pkg.loaded[name] end
      if name == "socket" or name == "socket.core" then
        if not model.sockets then
          -- Lua 5.4's own message (loadlib.c: the preload field, then every path and cpath entry)
          local lines = { "module '" .. name .. "' not found:", "\tno field package.preload['" .. name .. "']" }
          local file = name:gsub("%.", "/")
          for _, list in ipairs({ pkg.path, pkg.cpath }) do
            for template in list:gmatch("[^;]+") do
              lines[#lines + 1] = "\tno file '" .. template:gsub("%?", file) .. "'"
            end
          end
          error(table.concat(lines, "\n"), 2)
        end
        return socket_for_scripts()
      end
      local file = package.searchpath(name, pkg.path)
      local builtin = model.imgui_builtin and file and file:sub(1, #model.imgui_builtin) == model.imgui_builtin
      if file and (file:find("reaper_scripts", 1, true) or builtin) then
        local chunk = assert(loadfile(file, "t", env))
        local value = chunk(name)
        if value == nil then value = true end
        pkg.loaded[name] = value
        return value
      end
      return require(name)
    end
    script.env = env
    return env, script
  end

  -- The path to lib/ for scripts run outside the action files.
  function model.lib_env(lib_dir)
    local env, script = model.new_env(lib_dir .. "/none.lua")
    env.package.path = lib_dir .. "/?.lua;" .. env.package.path
    script.alive = false
    return env
  end

  function model.run_action(path)
    local env, script = model.new_env(path)
    model.scripts[#model.scripts + 1] = script
    local chunk = assert(loadfile(path, "t", env))
    local t0, n0, b0 = os.clock(), model.items_added, model.bytes_read
    local ok, err = xpcall(chunk, debug.traceback)
    model.record_tick(os.clock() - t0)
    model.max_tick_items = math.max(model.max_tick_items, model.items_added - n0)
    model.max_tick_bytes = math.max(model.max_tick_bytes, model.bytes_read - b0)
    if not ok then
      script.errors[#script.errors + 1] = err
      model.errors[#model.errors + 1] = err
    end
    model.check_refresh("main chunk of " .. path)
    model.finish_scripts()
    return script
  end

  function model.check_refresh(where)
    if model.refresh ~= 0 then
      model.refresh_violations[#model.refresh_violations + 1] = where
      model.refresh = 0
    end
    if model.undo_depth ~= 0 then
      model.errors[#model.errors + 1] = "undo block left open after " .. where
      model.undo_depth = 0
    end
  end

  -- A tick's cost is measured in CPU time (os.clock), for "does not hang" bounds only: a busy
  -- test machine must not fail a spec. Waiting inside a tick is counted instead: the calls that
  -- block are forbidden or recorded in model.blocking_calls (above), and the work of a tick is
  -- bounded by counts (model.max_tick_items, model.max_tick_bytes).
  function model.record_tick(dt)
    model.tick_times[#model.tick_times + 1] = dt
    if dt > model.max_tick then model.max_tick = dt end
  end

  local function run_atexit(script)
    script.alive = false
    for _, fn in ipairs(script.atexits) do
      local ok, err = xpcall(fn, debug.traceback)
      if not ok then model.errors[#model.errors + 1] = err end
    end
  end

  function model.finish_scripts()
    for _, s in ipairs(model.scripts) do
      if s.alive and s.pending == 0 then run_atexit(s) end
    end
  end

  -- Runs every function deferred before this tick once.
  function model.tick()
    local q = model.queue
    model.queue = {}
    for _, entry in ipairs(q) do
      local s = entry.script
      s.pending = s.pending - 1
      if s.alive then
        local t0, n0, b0 = os.clock(), model.items_added, model.bytes_read
        local ok, err = xpcall(entry.fn, debug.traceback)
        model.record_tick(os.clock() - t0)
        model.max_tick_items = math.max(model.max_tick_items, model.items_added - n0)
        model.max_tick_bytes = math.max(model.max_tick_bytes, model.bytes_read - b0)
        if not ok then
          s.errors[#s.errors + 1] = err
          model.errors[#model.errors + 1] = err
        end
        model.check_refresh("a deferred call of " .. s.path)
      end
    end
    model.finish_scripts()
  end

  function model.running()
    for _, s in ipairs(model.scripts) do if s.alive then return true end end
    return false
  end

  -- Ticks (about 30 per second, like REAPER's defer timer) until pred() or no script runs.
  function model.run_until(pred, timeout, interval)
    local deadline = now() + (timeout or 60)
    pred = pred or function() return false end
    while now() < deadline do
      if pred() then return true end
      if not model.running() then return pred() end
      model.tick()
      socket.sleep(interval or 0.03)
    end
    return false
  end

  -- The user terminates a running script (REAPER's "terminate instances" dialog).
  function model.terminate(script)
    local keep = {}
    for _, e in ipairs(model.queue) do
      if e.script ~= script then keep[#keep + 1] = e else script.pending = script.pending - 1 end
    end
    model.queue = keep
    if script.alive then run_atexit(script) end
  end

  return model
end

return M
