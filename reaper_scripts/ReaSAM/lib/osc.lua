-- @noindex
-- OSC 1.0 encoding and decoding in plain Lua 5.3+ (string.pack), no library needed.
--
-- encode(address, args): args is a list; Lua integers become int32 ('i'), other numbers
-- float32 ('f'), strings 's', booleans 'T'/'F'. A table { tag = "d", value = 1.5 } forces a
-- type tag (i, f, d, h, s, S, b, T, F, N, I).
-- decode(packet): a message { address =, args = {...}, tags = "..." } or a bundle
-- { bundle = true, timetag = {sec, frac}, elements = {...} }; nil, message on malformed input.
-- messages(packet): every message in a packet, bundles flattened, malformed parts dropped.
local osc = {}

local function pad4(n)
  return (4 - n % 4) % 4
end

local function osc_string(s)
  assert(not s:find("\0", 1, true), "OSC strings cannot contain NUL")
  return s .. string.rep("\0", 4 - #s % 4)
end

local function osc_blob(b)
  return string.pack(">i4", #b) .. b .. string.rep("\0", pad4(#b))
end

local function tag_of(v)
  local t = type(v)
  if t == "string" then return "s" end
  if t == "boolean" then return v and "T" or "F" end
  if t == "number" then
    if math.type(v) == "integer" and v >= -2147483648 and v <= 2147483647 then return "i" end
    return "f"
  end
  if t == "table" and v.tag then return v.tag end
  error("cannot encode a " .. t .. " as an OSC argument")
end

function osc.encode(address, args)
  assert(type(address) == "string" and address:sub(1, 1) == "/", "OSC address must start with /")
  args = args or {}
  local tags, data = { "," }, {}
  for i = 1, #args do
    local v = args[i]
    local tag = tag_of(v)
    if type(v) == "table" then v = v.value end
    tags[#tags + 1] = tag
    if tag == "i" then
      data[#data + 1] = string.pack(">i4", math.tointeger(v) or math.floor(v))
    elseif tag == "f" then
      data[#data + 1] = string.pack(">f", v)
    elseif tag == "d" then
      data[#data + 1] = string.pack(">d", v)
    elseif tag == "h" then
      data[#data + 1] = string.pack(">i8", math.tointeger(v) or math.floor(v))
    elseif tag == "s" or tag == "S" then
      data[#data + 1] = osc_string(tostring(v))
    elseif tag == "b" then
      data[#data + 1] = osc_blob(v)
    elseif tag == "T" or tag == "F" or tag == "N" or tag == "I" then -- luacheck: ignore 542
      -- no payload
    else
      error("unsupported OSC type tag " .. tostring(tag))
    end
  end
  return osc_string(address) .. osc_string(table.concat(tags)) .. table.concat(data)
end

local function read_string(data, pos)
  local z = data:find("\0", pos, true)
  if not z then return nil, "unterminated string" end
  local s = data:sub(pos, z - 1)
  local next_pos = pos + #s + 1
  next_pos = next_pos + pad4(next_pos - 1)
  if next_pos - 1 > #data then return nil, "string padding past the end" end
  return s, next_pos
end

local function decode_message(data)
  local address, pos = read_string(data, 1)
  if not address then return nil, pos end
  if address:sub(1, 1) ~= "/" then return nil, "address does not start with /" end
  local msg = { address = address, args = {}, tags = "" }
  if pos > #data then return msg end -- old-style message without type tags
  local tags
  tags, pos = read_string(data, pos)
  if not tags then return nil, pos end
  if tags:sub(1, 1) ~= "," then return nil, "type tags do not start with ," end
  tags = tags:sub(2)
  msg.tags = tags
  local n = #data
  for i = 1, #tags do
    local tag = tags:sub(i, i)
    local v
    if tag == "i" then
      if pos + 3 > n then return nil, "int32 past the end" end
      v, pos = string.unpack(">i4", data, pos)
    elseif tag == "f" then
      if pos + 3 > n then return nil, "float32 past the end" end
      v, pos = string.unpack(">f", data, pos)
    elseif tag == "d" then
      if pos + 7 > n then return nil, "float64 past the end" end
      v, pos = string.unpack(">d", data, pos)
    elseif tag == "h" then
      if pos + 7 > n then return nil, "int64 past the end" end
      v, pos = string.unpack(">i8", data, pos)
    elseif tag == "t" then
      if pos + 7 > n then return nil, "timetag past the end" end
      local sec, frac
      sec, frac, pos = string.unpack(">I4I4", data, pos)
      v = { sec, frac }
    elseif tag == "s" or tag == "S" then
      v, pos = read_string(data, pos)
      if not v then return nil, pos end
    elseif tag == "b" then
      if pos + 3 > n then return nil, "blob size past the end" end
      local size
      size, pos = string.unpack(">i4", data, pos)
      if size < 0 or pos + size - 1 > n then return nil, "blob past the end" end
      v = data:sub(pos, pos + size - 1)
      pos = pos + size + pad4(size)
    elseif tag == "T" then
      v = true
    elseif tag == "F" then
      v = false
    elseif tag == "N" then
      v = nil
    elseif tag == "I" then
      v = math.huge
    elseif tag == "c" or tag == "r" or tag == "m" then
      if pos + 3 > n then return nil, "32-bit argument past the end" end
      v, pos = string.unpack(">I4", data, pos)
    else
      return nil, "unknown type tag " .. tag
    end
    msg.args[i] = v
  end
  return msg
end

function osc.decode(data, depth)
  if type(data) ~= "string" or #data < 4 then return nil, "packet too short" end
  if #data % 4 ~= 0 then return nil, "packet size is not a multiple of 4" end
  if data:sub(1, 8) == "#bundle\0" then
    depth = (depth or 0) + 1
    if depth > 8 then return nil, "bundles nested too deep" end
    if #data < 16 then return nil, "bundle too short" end
    local sec, frac, pos = string.unpack(">I4I4", data, 9)
    local bundle = { bundle = true, timetag = { sec, frac }, elements = {} }
    while pos <= #data do
      if pos + 3 > #data then return nil, "bundle element size past the end" end
      local size
      size, pos = string.unpack(">i4", data, pos)
      if size <= 0 or pos + size - 1 > #data then return nil, "bundle element past the end" end
      local element, err = osc.decode(data:sub(pos, pos + size - 1), depth)
      if not element then return nil, err end
      bundle.elements[#bundle.elements + 1] = element
      pos = pos + size
    end
    return bundle
  end
  return decode_message(data)
end

-- All messages of a packet, bundles flattened in order.
function osc.messages(data)
  local packet = osc.decode(data)
  local out = {}
  local function walk(p)
    if p.bundle then
      for _, e in ipairs(p.elements) do walk(e) end
    else
      out[#out + 1] = p
    end
  end
  if packet then walk(packet) end
  return out
end

return osc
