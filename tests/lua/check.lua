-- Checks on what the scripts imported: stems read at the imported offsets sum to the original.
local wav = require("wav")

local C = {}

local cache = {}
local function read(path)
  if not cache[path] then cache[path] = assert(wav.read(path)) end
  return cache[path]
end
function C.forget() cache = {} end

-- Section offset and root file of a take's source.
local function root(src)
  local off = 0
  while src.parent do
    if src.section then off = off + src.section[1] end
    src = src.parent
  end
  return src.file, off
end

-- For every stem frame the new items play, the original take plays the same file frame at the
-- same project time, and the stems (target + residual, or every stem of a set) add up to it.
-- Returns the number of frames checked.
function C.set_sum(orig_item, items, tol, opts)
  tol = tol or 2e-5
  opts = opts or {}
  local ot = orig_item.active
  local ofile, off = root(ot.source)
  local orig = read(ofile)
  local pos, so, rate = orig_item.info.D_POSITION, ot.info.D_STARTOFFS, ot.info.D_PLAYRATE
  local first = items[1]
  local stems = {}
  for i, it in ipairs(items) do
    assert(it.info.D_POSITION == first.info.D_POSITION, "stems start apart")
    assert(it.info.D_LENGTH == first.info.D_LENGTH, "stem lengths differ")
    assert(it.active.info.D_STARTOFFS == first.active.info.D_STARTOFFS, "stem offsets differ")
    assert(it.active.info.D_PLAYRATE == rate, "playrate not copied")
    stems[i] = read(it.active.source.file)
    assert(stems[i].rate == orig.rate, "stem rate differs from the source")
    assert(stems[i].frames == stems[1].frames, "stems differ in length")
    assert(stems[i].channels == orig.channels, "stem channels differ")
  end
  local ch = orig.channels
  local sr = orig.rate
  local frames = stems[1].frames
  local pos2, len2, so2 = first.info.D_POSITION, first.info.D_LENGTH, first.active.info.D_STARTOFFS
  assert(pos2 >= pos - 1e-9 and pos2 + len2 <= pos + orig_item.info.D_LENGTH + 1e-9, "new item outside the original")
  -- (a take spans its whole item: before the stem's start and after its end it plays silence, as
  -- the original does there)
  if not opts.takes then
    assert(so2 >= -1e-9, "negative start offset into the stem")
    -- (less than one frame past the end: a region is rarely a whole number of frames)
    assert(so2 + len2 * rate <= (frames + 1) / sr, "the new item plays past the end of the stem")
  end
  local m0 = math.max(0, math.ceil(so2 * sr - 1e-6))
  local m1 = math.min(math.floor((so2 + len2 * rate) * sr + 1e-6) - 1, frames - 1)
  local O = orig.samples
  local checked, worst = 0, 0
  for m = m0, m1 do
    local t = pos2 + (m / sr - so2) / rate
    local n = (off + so + (t - pos) * rate) * sr
    local N = math.floor(n + 0.5)
    if math.abs(n - N) > 1e-4 then
      error(string.format("stem frame %d lands between source frames (%.6f)", m, n))
    end
    for c = 1, ch do
      local sum = 0
      for _, st in ipairs(stems) do sum = sum + st.samples[m * ch + c] end
      local d = math.abs(sum - O[N * ch + c])
      if d > worst then worst = d end
      if d > tol then
        error(string.format("frame %d ch %d: stems sum to %.6f != original %.6f (source frame %d)",
          m, c, sum, O[N * ch + c], N))
      end
    end
    checked = checked + 1
  end
  assert(checked > 0, "no frames checked")
  return checked, worst
end

-- Stems as takes of the original item: each take plays through the item's position and length,
-- so it is checked as an item of its own with the item's values (orig_take: the original take).
function C.takes_sum(item, orig_take, takes, tol)
  local function as_item(take) return { info = item.info, active = take } end
  local list = {}
  for i, t in ipairs(takes) do list[i] = as_item(t) end
  return C.set_sum(as_item(orig_take), list, tol, { takes = true })
end

function C.stems_sum(orig_item, target_item, residual_item, tol)
  return C.set_sum(orig_item, { target_item, residual_item }, tol)
end

-- Items on a track, sorted by position.
function C.items(track)
  local out = {}
  for _, it in ipairs(track.items) do out[#out + 1] = it end
  table.sort(out, function(a, b) return a.info.D_POSITION < b.info.D_POSITION end)
  return out
end

function C.track_names(model)
  local out = {}
  for i, t in ipairs(model.tracks) do out[i] = t.name end
  return out
end

return C
