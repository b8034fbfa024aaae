-- WAV reading and writing for the specs (PCM 16/24/32-bit integer, 32/64-bit float,
-- WAVE_FORMAT_EXTENSIBLE). Samples are floats in [-1, 1), interleaved.
local wav = {}

-- Header only: { rate, channels, bits, format (1 int, 3 float), frames, data_offset, data_size }.
function wav.info(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot open " .. path end
  local head = f:read(12)
  if not head or #head < 12 or head:sub(1, 4) ~= "RIFF" or head:sub(9, 12) ~= "WAVE" then
    f:close()
    return nil, path .. " is not a RIFF/WAVE file"
  end
  local info = {}
  local pos = 12
  while true do
    local ch = f:read(8)
    if not ch or #ch < 8 then break end
    local id, size = ch:sub(1, 4), string.unpack("<I4", ch, 5)
    pos = pos + 8
    if id == "fmt " then
      local fmt = f:read(size)
      local tag, channels, rate, _, _, bits = string.unpack("<I2I2I4I4I2I2", fmt)
      if tag == 0xFFFE and #fmt >= 26 then tag = string.unpack("<I2", fmt, 25) end
      info.format, info.channels, info.rate, info.bits = tag, channels, rate, bits
      if size % 2 == 1 then f:read(1) end
    elseif id == "data" then
      info.data_offset = pos
      info.data_size = size
      break
    else
      f:seek("cur", size + size % 2)
    end
    pos = pos + size + size % 2
  end
  f:close()
  if not info.format or not info.data_offset then return nil, path .. ": no fmt or data chunk" end
  info.frames = info.data_size // (info.channels * info.bits // 8)
  return info
end

-- Whole file: info with .samples (interleaved floats).
function wav.read(path)
  local info, err = wav.info(path)
  if not info then return nil, err end
  local f = io.open(path, "rb")
  f:seek("set", info.data_offset)
  local data = f:read(info.frames * info.channels * info.bits // 8)
  f:close()
  local n = info.frames * info.channels
  local out = {}
  local fmt, scale
  if info.format == 3 then
    fmt = info.bits == 64 and "<d" or "<f"
    scale = 1
  elseif info.bits == 16 then
    fmt, scale = "<i2", 1 / 32768
  elseif info.bits == 24 then
    fmt, scale = "<i3", 1 / 8388608
  elseif info.bits == 32 then
    fmt, scale = "<i4", 1 / 2147483648
  else
    return nil, "unsupported WAV sample format"
  end
  local step = info.bits // 8
  local unpack = string.unpack
  local pos = 1
  for i = 1, n do
    out[i] = unpack(fmt, data, pos) * scale
    pos = pos + step
  end
  info.samples = out
  return info
end

-- Writes interleaved samples as 16-bit PCM (bits = 16) or 32-bit float (bits = 32).
function wav.write(path, rate, channels, samples, bits)
  bits = bits or 16
  local parts = {}
  if bits == 16 then
    for i = 1, #samples do
      local v = math.floor(math.max(-1, math.min(32767 / 32768, samples[i])) * 32768 + 0.5)
      if v > 32767 then v = 32767 end
      parts[i] = string.pack("<i2", v)
    end
  else
    for i = 1, #samples do parts[i] = string.pack("<f", samples[i]) end
  end
  local data = table.concat(parts)
  local tag = bits == 16 and 1 or 3
  local fmt = string.pack("<I2I2I4I4I2I2", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
  local f = assert(io.open(path, "wb"))
  f:write("RIFF", string.pack("<I4", 4 + 8 + #fmt + 8 + #data), "WAVE")
  f:write("fmt ", string.pack("<I4", #fmt), fmt)
  f:write("data", string.pack("<I4", #data), data)
  f:close()
end

-- A long file made of `times` copies of the given samples (written without building it in memory).
function wav.write_repeated(path, rate, channels, samples, times)
  local tmp = path .. ".part"
  wav.write(tmp, rate, channels, samples, 16)
  local f = assert(io.open(tmp, "rb"))
  local all = f:read("a")
  f:close()
  os.remove(tmp)
  local data = all:sub(45)
  local fmt = all:sub(13, 36)
  local out = assert(io.open(path, "wb"))
  out:write("RIFF", string.pack("<I4", 4 + #fmt + 8 + #data * times), "WAVE", fmt)
  out:write("data", string.pack("<I4", #data * times))
  for _ = 1, times do out:write(data) end
  out:close()
end

-- A test signal: a chord pad plus periodic clicks (something for HPSS to split), stereo.
function wav.test_signal(seconds, rate, seed)
  rate = rate or 44100
  math.randomseed(seed or 1)
  local frames = math.floor(seconds * rate)
  local out = {}
  local clicks = math.floor(rate * 0.25)
  for n = 0, frames - 1 do
    local t = n / rate
    local pad = 0.12 * math.sin(2 * math.pi * 220 * t) + 0.08 * math.sin(2 * math.pi * 330 * t)
      + 0.05 * math.sin(2 * math.pi * 440 * t + 0.3)
    local k = n % clicks
    local click = 0
    if k < 600 then click = 0.5 * (math.random() * 2 - 1) * math.exp(-k / 120) end
    -- a ramp so every frame is distinct: misalignment cannot hide
    local ramp = 0.02 * (n / frames)
    out[2 * n + 1] = pad + click + ramp
    out[2 * n + 2] = 0.9 * pad - click + ramp
  end
  return out, frames
end

return wav
