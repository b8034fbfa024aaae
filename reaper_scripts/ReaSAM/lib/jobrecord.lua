-- @noindex
-- What "import again" needs of a job this project started, kept in the project itself
-- (SetProjExtState: saved with the .rpp, so it survives closing REAPER): the item, take and
-- track by GUID, where the item sat and how it played when it was sent (the stems line up with
-- that), the prompts, and the output root. One key per job id in section "ReaSAM_jobs"; the
-- oldest records beyond MAX are dropped.
local reaper = reaper
local util = require("util")

local jobrecord = {}

jobrecord.SECTION = "ReaSAM_jobs"
jobrecord.MAX = 200

local NUMBERS = { rs = "region_start", re = "region_end", pos = "item_position", len = "item_length",
  so = "startoffs", rate = "playrate", off = "section_offset" }

local function guid_of(kind, obj)
  if obj == nil then return "" end
  local ok, value
  if kind == "item" then
    ok, value = reaper.GetSetMediaItemInfo_String(obj, "GUID", "", false)
  elseif kind == "take" then
    ok, value = reaper.GetSetMediaItemTakeInfo_String(obj, "GUID", "", false)
  else
    ok, value = true, reaper.GetTrackGUID(obj)
  end
  return ok and value or ""
end

local function encode(rec)
  local parts = {}
  for k, v in pairs(rec) do parts[#parts + 1] = k .. "=" .. util.escape(tostring(v)) end
  table.sort(parts)
  return table.concat(parts, ";")
end

local function decode(text)
  local rec = {}
  for _, part in ipairs(util.split(text or "", ";")) do
    local k, v = part:match("^([%w_]+)=(.*)$")
    if k then rec[k] = util.unescape(v) end
  end
  return rec
end

-- Every record of this project: { [job id] = rec }.
function jobrecord.all()
  local out, i = {}, 0
  while true do
    local ok, key, value = reaper.EnumProjExtState(0, jobrecord.SECTION, i)
    if not ok then break end
    out[key] = decode(value)
    i = i + 1
  end
  return out
end

local function prune()
  local all = jobrecord.all()
  local ids = {}
  for id, rec in pairs(all) do ids[#ids + 1] = { id = id, at = tonumber(rec.at) or 0 } end
  if #ids <= jobrecord.MAX then return end
  table.sort(ids, function(a, b) return a.at < b.at end)
  for i = 1, #ids - jobrecord.MAX do reaper.SetProjExtState(0, jobrecord.SECTION, ids[i].id, "") end
end

-- Records a job as it is sent (stem_set: it was a set of prompts).
function jobrecord.remember(job, stem_set)
  local req = job.request
  local rec = {
    item = guid_of("item", req.item), take = guid_of("take", req.take), track = guid_of("track", req.track),
    label = req.label or "", path = req.path or "", spans = table.concat(req.spans or {}, " "),
    name = job.prompt_name or "", text = job.prompt_text or "", out = job.out or "",
    prompts = table.concat(job.prompts or {}, "\n"), set = stem_set and 1 or 0, at = os.time(),
    partial = req.partial and 1 or 0,
  }
  for short, long in pairs(NUMBERS) do rec[short] = util.num(req[long] or 0) end
  reaper.SetProjExtState(0, jobrecord.SECTION, job.id, encode(rec))
  prune()
end

local function find_track(guid)
  for i = 0, reaper.CountTracks(0) - 1 do
    local tr = reaper.GetTrack(0, i)
    if reaper.GetTrackGUID(tr) == guid then return tr end
  end
  return nil
end

local function find_item(guid)
  for i = 0, reaper.CountMediaItems(0) - 1 do
    local item = reaper.GetMediaItem(0, i)
    if guid_of("item", item) == guid then return item end
  end
  return nil
end

-- The job as the importer takes it (request with the recorded placement; item, take and track
-- when they are still in the project), and whether it was a stem set; nil when this project did
-- not start that job.
function jobrecord.job(id)
  local ok, text = reaper.GetProjExtState(0, jobrecord.SECTION, id)
  if not ok or ok == 0 or text == "" then return nil end
  local rec = decode(text)
  local item = rec.item ~= "" and find_item(rec.item) or nil
  -- The original take by its GUID among all the item's takes: after a separation into takes the
  -- active one is a stem.
  local take
  for i = 0, (item and reaper.CountTakes(item) or 0) - 1 do
    local tk = reaper.GetTake(item, i)
    if tk and guid_of("take", tk) == rec.take then take = tk end
  end
  local req = { item = item, take = take, track = rec.track ~= "" and find_track(rec.track) or nil,
    label = rec.label, path = rec.path, spans = {}, partial = rec.partial == "1" }
  for short, long in pairs(NUMBERS) do req[long] = tonumber(rec[short]) or 0 end
  for span in (rec.spans or ""):gmatch("%S+") do req.spans[#req.spans + 1] = span end
  local prompts = {}
  for p in ((rec.prompts or "") .. "\n"):gmatch("(.-)\n") do if p ~= "" then prompts[#prompts + 1] = p end end
  return {
    id = id, request = req, prompt_name = rec.name, prompt_text = rec.text, out = rec.out,
    prompts = #prompts > 0 and prompts or nil,
  }, rec.set == "1"
end

return jobrecord
