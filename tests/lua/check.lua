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
-- same project time, and target + residual equals it. Returns the number of frames checked.
function C.stems_sum(orig_item, target_item, residual_item, tol)
  tol = tol or 2e-5
  local ot = orig_item.active
  local ofile, off = root(ot.source)
  local orig = read(ofile)
  local pos, so, rate = orig_item.info.D_POSITION, ot.info.D_STARTOFFS, ot.info.D_PLAYRATE
  local tt, rt = target_item.active, residual_item.active
  assert(target_item.info.D_POSITION == residual_item.info.D_POSITION, "target and residual start apart")
  assert(target_item.info.D_LENGTH == residual_item.info.D_LENGTH, "target and residual lengths differ")
  assert(tt.info.D_STARTOFFS == rt.info.D_STARTOFFS, "target and residual offsets differ")
  assert(tt.info.D_PLAYRATE == rate and rt.info.D_PLAYRATE == rate, "playrate not copied")
  local target, residual = read(tt.source.file), read(rt.source.file)
  assert(target.rate == orig.rate and residual.rate == orig.rate, "stem rate differs from the source")
  assert(target.frames == residual.frames, "stems differ in length")
  local ch = orig.channels
  assert(target.channels == ch, "stem channels differ")
  local sr = orig.rate
  local pos2, len2, so2 = target_item.info.D_POSITION, target_item.info.D_LENGTH, tt.info.D_STARTOFFS
  assert(pos2 >= pos - 1e-9 and pos2 + len2 <= pos + orig_item.info.D_LENGTH + 1e-9, "new item outside the original")
  assert(so2 >= -1e-9, "negative start offset into the stem")
  -- (less than one frame past the end: a region is rarely a whole number of frames)
  assert(so2 + len2 * rate <= (target.frames + 1) / sr, "the new item plays past the end of the stem")
  local m0 = math.ceil(so2 * sr - 1e-6)
  local m1 = math.min(math.floor((so2 + len2 * rate) * sr + 1e-6) - 1, target.frames - 1)
  local T, R, O = target.samples, residual.samples, orig.samples
  local checked, worst = 0, 0
  for m = m0, m1 do
    local t = pos2 + (m / sr - so2) / rate
    local n = (off + so + (t - pos) * rate) * sr
    local N = math.floor(n + 0.5)
    if math.abs(n - N) > 1e-4 then
      error(string.format("stem frame %d lands between source frames (%.6f)", m, n))
    end
    for c = 1, ch do
      local d = math.abs(T[m * ch + c] + R[m * ch + c] - O[N * ch + c])
      if d > worst then worst = d end
      if d > tol then
        error(string.format("frame %d ch %d: target+residual %.6f != original %.6f (source frame %d)",
          m, c, T[m * ch + c] + R[m * ch + c], O[N * ch + c], N))
      end
    end
    checked = checked + 1
  end
  assert(checked > 0, "no frames checked")
  return checked, worst
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
