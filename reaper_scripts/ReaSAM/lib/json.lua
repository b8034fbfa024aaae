-- @noindex
-- A small, strict JSON decoder for status.json / manifest.json and the daemon's /reasam/status
-- reply (the scripts never write JSON). JSON null decodes to json.null so keys stay visible.
local json = {}

json.null = setmetatable({}, { __tostring = function() return "null" end })

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(cp)
  return utf8.char(cp)
end

local decode_value

local function skip(s, pos)
  return s:find("[^ \t\r\n]", pos) or #s + 1
end

local function err(_, pos, what)
  return error(string.format("JSON: %s at character %d", what, pos), 0)
end

local function decode_string(s, pos)
  -- pos is at the opening quote
  local out = {}
  local i = pos + 1
  while true do
    local j = s:find('["\\%c]', i)
    if not j then err(s, pos, "unterminated string") end
    out[#out + 1] = s:sub(i, j - 1)
    local c = s:sub(j, j)
    if c == '"' then
      return table.concat(out), j + 1
    elseif c == "\\" then
      local e = s:sub(j + 1, j + 1)
      if e == "u" then
        local hex = s:sub(j + 2, j + 5)
        if not hex:match("^%x%x%x%x$") then err(s, j, "bad \\u escape") end
        local cp = tonumber(hex, 16)
        local nxt = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF and s:sub(nxt, nxt + 1) == "\\u" then
          local lo = tonumber(s:sub(nxt + 2, nxt + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            nxt = nxt + 6
          end
        end
        out[#out + 1] = utf8_char(cp)
        i = nxt
      elseif escapes[e] then
        out[#out + 1] = escapes[e]
        i = j + 2
      else
        err(s, j, "bad escape")
      end
    else
      err(s, j, "control character in string")
    end
  end
end

local function decode_number(s, pos)
  local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
  if not num or num == "" or num == "-" then err(s, pos, "bad number") end
  local v = tonumber(num)
  if v == nil then err(s, pos, "bad number") end
  if math.type(v) == "float" and not num:find("[.eE]") then v = math.tointeger(v) or v end
  return v, pos + #num
end

decode_value = function(s, pos, depth)
  if depth > 64 then err(s, pos, "nested too deep") end
  pos = skip(s, pos)
  local c = s:sub(pos, pos)
  if c == "{" then
    local obj = {}
    pos = skip(s, pos + 1)
    if s:sub(pos, pos) == "}" then return obj, pos + 1 end
    while true do
      if s:sub(pos, pos) ~= '"' then err(s, pos, "expected a key") end
      local key
      key, pos = decode_string(s, pos)
      pos = skip(s, pos)
      if s:sub(pos, pos) ~= ":" then err(s, pos, "expected ':'") end
      local v
      v, pos = decode_value(s, pos + 1, depth + 1)
      obj[key] = v
      pos = skip(s, pos)
      local d = s:sub(pos, pos)
      if d == "}" then return obj, pos + 1 end
      if d ~= "," then err(s, pos, "expected ',' or '}'") end
      pos = skip(s, pos + 1)
    end
  elseif c == "[" then
    local arr = {}
    pos = skip(s, pos + 1)
    if s:sub(pos, pos) == "]" then return arr, pos + 1 end
    while true do
      local v
      v, pos = decode_value(s, pos, depth + 1)
      arr[#arr + 1] = v
      pos = skip(s, pos)
      local d = s:sub(pos, pos)
      if d == "]" then return arr, pos + 1 end
      if d ~= "," then err(s, pos, "expected ',' or ']'") end
      pos = pos + 1
    end
  elseif c == '"' then
    return decode_string(s, pos)
  elseif c == "-" or c:match("%d") then
    return decode_number(s, pos)
  elseif s:sub(pos, pos + 3) == "true" then
    return true, pos + 4
  elseif s:sub(pos, pos + 4) == "false" then
    return false, pos + 5
  elseif s:sub(pos, pos + 3) == "null" then
    return json.null, pos + 4
  end
  err(s, pos, "unexpected " .. (c == "" and "end of text" or ("'" .. c .. "'")))
end

-- Returns value, or nil and a message.
function json.decode(s)
  if type(s) ~= "string" then return nil, "JSON: not a string" end
  local ok, value, pos = pcall(decode_value, s, 1, 0)
  if not ok then return nil, value end
  pos = skip(s, pos)
  if pos <= #s then return nil, string.format("JSON: trailing text at character %d", pos) end
  return value
end

return json
