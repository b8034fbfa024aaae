-- @noindex
-- What ReaSAM writes on every take it makes (P_EXT:reasam_*), and finding the stems it made
-- earlier for an item, so that separating it again can replace them (settings: on_repeat).
local reaper = reaper
local util = require("util")

local marks = {}

local function valid(ptr, kind)
  if ptr == nil then return false end
  if reaper.ValidatePtr2 then return reaper.ValidatePtr2(0, ptr, kind) end
  return true
end

local function obj_guid(kind, obj)
  if not valid(obj, kind) then return "" end
  local get = kind == "MediaItem*" and reaper.GetSetMediaItemInfo_String or reaper.GetSetMediaItemTakeInfo_String
  local _, g = get(obj, "GUID", "", false)
  return g or ""
end

-- What the stems of a job are for: the original item and take, the prompts (with any spans), the
-- region (file seconds). Written on every take ReaSAM makes, so that separating the same item
-- again with the same prompts finds them (settings: on_repeat).
local function stem_key(job)
  return job.prompt_name .. "|" .. table.concat(job.request.spans or {}, " ")
end

-- stem: { role ("target"/"residual"), key (the stem's name in the job), prompt (a set's target:
-- its own prompt) }.
function marks.stamp(take, job, stem)
  local req = job.request
  local set = reaper.GetSetMediaItemTakeInfo_String
  set(take, "P_EXT:reasam_job", job.id, true)
  set(take, "P_EXT:reasam_prompt", stem.prompt or job.prompt_text or "", true)
  set(take, "P_EXT:reasam_spans", table.concat(req.spans or {}, " "), true)
  set(take, "P_EXT:reasam_role", stem.role, true)
  set(take, "P_EXT:reasam_stem", stem.key, true)
  set(take, "P_EXT:reasam_key", stem_key(job), true)
  set(take, "P_EXT:reasam_item", obj_guid("MediaItem*", req.item), true)
  set(take, "P_EXT:reasam_take", obj_guid("MediaItem_Take*", req.take), true)
  set(take, "P_EXT:reasam_region", util.num(req.region_start) .. ":" .. util.num(req.region_end), true)
  -- The item the stem was put in: REAPER copies P_EXT data with a duplicated item (which gets a
  -- GUID of its own), so a take whose item is not this one is in the user's copy.
  set(take, "P_EXT:reasam_own", obj_guid("MediaItem*", reaper.GetMediaItemTake_Item(take)), true)
end

local function ext(take, key)
  local _, v = reaper.GetSetMediaItemTakeInfo_String(take, "P_EXT:" .. key, "", false)
  return v or ""
end

-- The stems ReaSAM made earlier for the same item, prompts and region (another part of the
-- item, or the item after a trim, is not a repeat: its stems stay): a list of
-- { kind = "take", take } (a take of the original item) or { kind = "item", item, track } (an
-- item holding only ReaSAM's takes, wherever the user moved it or however the track is named),
-- each with its stem key. A take the user put in an item of their own, or a copy of a stem item
-- the user made (its marks copied with it), is theirs: not listed.
function marks.earlier(job)
  local req = job.request
  local item_guid = obj_guid("MediaItem*", req.item)
  if item_guid == "" then return {} end
  local key = stem_key(job)
  local found = {}
  for t = 0, reaper.CountTracks(0) - 1 do
    local tr = reaper.GetTrack(0, t)
    for i = 0, reaper.CountTrackMediaItems(tr) - 1 do
      local it = reaper.GetTrackMediaItem(tr, i)
      local n, ours, hits = reaper.CountTakes(it), 0, {}
      local it_guid = obj_guid("MediaItem*", it)
      for k = 0, n - 1 do
        local tk = reaper.GetTake(it, k)
        -- A stem take in an item other than the one ReaSAM put it in (a duplicate, with the
        -- marks copied) is the user's: never replaced, never removed.
        local placed = ext(tk, "reasam_own") == it_guid
        if ext(tk, "reasam_role") ~= "" and placed then ours = ours + 1 end
        local a, b = ext(tk, "reasam_region"):match("^([^:]+):([^:]+)$")
        a, b = tonumber(a), tonumber(b)
        if placed and ext(tk, "reasam_item") == item_guid and ext(tk, "reasam_key") == key and a and b
          and math.abs(a - req.region_start) < 1e-3 and math.abs(b - req.region_end) < 1e-3 then
          hits[#hits + 1] = tk
        end
      end
      for _, tk in ipairs(hits) do
        if it == req.item then
          found[#found + 1] = { kind = "take", take = tk, stem = ext(tk, "reasam_stem") }
        elseif ours == n then
          found[#found + 1] = { kind = "item", item = it, track = tr, stem = ext(tk, "reasam_stem") }
        end
      end
    end
  end
  return found
end

-- The earlier stems by stem key when every stem of the plan has one (and those that are takes
-- can be takes again); else nil.
function marks.reusable(earlier, plan, takes_ok)
  if #earlier == 0 then return nil end
  local by = {}
  for _, e in ipairs(earlier) do by[e.stem] = by[e.stem] or e end
  for _, p in ipairs(plan) do
    local e = by[p.key]
    if not e or (e.kind == "take" and not takes_ok) then return nil end
  end
  return by
end

return marks
