-- @noindex
-- The take's volume, pan and mute envelopes go with the stems, so that each stem is shaped as
-- the original was. REAPER has no call that creates a take envelope: it is written into the
-- item's state chunk after the take's <SOURCE> block (as in a saved project). A take envelope's
-- time runs from the item's start in take time (at the playrate), so a stem item that starts
-- `shift` seconds of take time later gets its points moved back by as much.
local reaper = reaper

local take_envelopes = {}

local function valid(ptr, kind)
  if ptr == nil then return false end
  if reaper.ValidatePtr2 then return reaper.ValidatePtr2(0, ptr, kind) end
  return true
end

local TAKE_ENVELOPES = { { "Volume", "VOLENV" }, { "Pan", "PANENV" }, { "Mute", "MUTEENV" } }
local ENV_BLOCK = { VOLENV = true, PANENV = true, MUTEENV = true }

local function envelope_chunks(orig_take, shift)
  local out = {}
  if not (reaper.GetTakeEnvelopeByName and valid(orig_take, "MediaItem_Take*")) then return out end
  for _, e in ipairs(TAKE_ENVELOPES) do
    local env = reaper.GetTakeEnvelopeByName(orig_take, e[1])
    local ok, chunk = false, nil
    if env then ok, chunk = reaper.GetEnvelopeStateChunk(env, "", false) end
    if ok and type(chunk) == "string" and chunk:match("^%s*<" .. e[2]) then
      chunk = chunk:gsub("\r?\n%s*EGUID [^\r\n]*", "") -- the copy gets a GUID of its own
      if shift ~= 0 then
        chunk = chunk:gsub("(\n%s*PT )([^ \r\n]+)", function(head, t)
          return head .. string.format("%.14g", tonumber(t) - shift)
        end)
      end
      out[#out + 1] = chunk
    end
  end
  return out
end

-- Gives takes of `item` envelope chunks: by_index[i] (i 0-based) = the chunks of take i, in
-- place of the volume, pan and mute envelopes it had (an earlier stem's, on a repeat). One
-- SetItemStateChunk per item, after every other change to it: REAPER may make the item's takes
-- anew from the chunk, so no take pointer is used after it.
local function set_take_envelopes(item, by_index)
  local ok, chunk = reaper.GetItemStateChunk(item, "", false)
  if not ok or type(chunk) ~= "string" then error("REAPER did not give the item's state", 0) end
  local out, depth, take, skipping, done = {}, 0, 0, 0, {}
  local function insert()
    local chunks = by_index[take]
    if chunks and not done[take] then
      for _, c in ipairs(chunks) do out[#out + 1] = c end
      done[take] = true
    end
  end
  for line in (chunk .. "\n"):gmatch("(.-)\r?\n") do
    local l = line:match("^%s*(.-)%s*$")
    if skipping > 0 then
      if l:sub(1, 1) == "<" then skipping = skipping + 1 elseif l == ">" then skipping = skipping - 1 end
    elseif depth == 1 and by_index[take] and ENV_BLOCK[l:match("^<(%u+)") or ""] then
      skipping = 1
    else
      if depth == 1 and l:match("^TAKE") then
        insert()
        take = take + 1
      end
      if depth == 1 and l == ">" then insert() end
      if l:sub(1, 1) == "<" then depth = depth + 1 elseif l == ">" then depth = depth - 1 end
      out[#out + 1] = line
    end
  end
  for i in pairs(by_index) do
    if not done[i] then error("the item's state has no take " .. i, 0) end
  end
  while out[#out] == "" do out[#out] = nil end
  reaper.SetItemStateChunk(item, table.concat(out, "\n"), false)
end

local function take_index(item, take)
  for i = 0, reaper.CountTakes(item) - 1 do
    if reaper.GetTake(item, i) == take then return i end
  end
  return nil
end

-- Stem takes that get the original take's envelopes once everything else is done:
-- pending[#pending + 1] = { take, shift }. Nothing to do for a take when the original has none
-- and the take had none.
function take_envelopes.copy(orig_take, pending)
  local by_item, items = {}, {}
  for _, e in ipairs(pending) do
    local take, shift = e[1], e[2]
    local chunks = envelope_chunks(orig_take, shift)
    local had = #chunks > 0
    for _, env in ipairs(TAKE_ENVELOPES) do had = had or reaper.GetTakeEnvelopeByName(take, env[1]) ~= nil end
    if had then
      local item = reaper.GetMediaItemTake_Item(take)
      if not by_item[item] then
        by_item[item] = {}
        items[#items + 1] = item
      end
      by_item[item][take_index(item, take)] = chunks
    end
  end
  for _, item in ipairs(items) do set_take_envelopes(item, by_item[item]) end
end

return take_envelopes
