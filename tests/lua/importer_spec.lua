-- The import of a finished job, without a daemon: a manifest and its stem files made here. A
-- failure half-way must leave the project as it was (no half-made tracks or stray items).
local H = require("helpers")
local wav = require("wav")

describe("importer", function()
  local dir, source, target, residual, model, importer, selection
  local RATE = 8000

  setup(function()
    dir = H.tmpdir("imp")
    local frames = RATE * 4
    local s, t, r = {}, {}, {}
    for i = 1, frames * 2 do
      s[i] = math.sin(i / 7) * 0.5
      t[i] = s[i] * 0.25
      r[i] = s[i] - t[i]
    end
    source, target, residual = dir .. "/source.wav", dir .. "/target.wav", dir .. "/residual.wav"
    wav.write(source, RATE, 2, s)
    wav.write(target, RATE, 2, t)
    wav.write(residual, RATE, 2, r)
  end)
  teardown(function()
    H.rmtree(dir)
    H.cleanup()
  end)

  before_each(function()
    model = H.model()
    importer = H.lib(model, "importer")
    selection = H.lib(model, "selection")
  end)

  local function job_for(item, id)
    local req = assert(selection.map_item(item))
    return { id = id or "job-1", request = req, prompt_text = "drums", prompt_name = "drums" }
  end

  -- Stems covering the whole file (what the daemon returns for the region it was asked).
  local function manifest(region)
    region = region or { 0, 4 }
    local function stem(role, path)
      return { role = role, name = role, path = path, channels = 2, frames = RATE * 4,
        region_start = region[1], region_end = region[2] }
    end
    return { sample_rate = RATE, stems = { stem("target", target), stem("residual", residual) } }
  end

  -- What the project looks like: track names, folder depths, items and their mute state.
  local function snapshot()
    local out = {}
    for _, tr in ipairs(model.tracks) do
      local items = {}
      for _, it in ipairs(tr.items) do items[#items + 1] = { it, it.info.B_MUTE } end
      out[#out + 1] = { tr.name, tr.info.I_FOLDERDEPTH, items }
    end
    return out
  end

  -- REAPER cannot open the residual stem (it was removed, or is locked, after the manifest was
  -- written): PCM_Source_CreateFromFile returns nil for it.
  local function fail_on_residual()
    local create = model.reaper.PCM_Source_CreateFromFile
    model.reaper.PCM_Source_CreateFromFile = function(path)
      if path == residual then return nil end
      return create(path)
    end
  end

  local function balanced()
    assert.are.equal(0, model.undo_depth)
    assert.are.equal(0, model.refresh)
  end

  it("imports target and residual under the source track", function()
    local tr = model.add_track("Guitar")
    local item = model.add_item(tr, { file = source, position = 1 })
    local res = assert(importer.import(job_for(item), manifest(), { mute = true, batch = "b" }))
    balanced()
    assert.are.equal(2, #res.items)
    assert.are.equal(3, #model.tracks)
    assert.are.equal(1, item.info.B_MUTE)
  end)

  it("deletes the tracks it made and restores the source's folder when a stem cannot be opened", function()
    model.add_track("Band", 1)
    local gtr = model.add_track("Guitar", -1) -- closes the Band folder: the import moves that
    model.add_track("After")
    local item = model.add_item(gtr, { file = source, position = 0 })
    local before = snapshot()
    fail_on_residual()
    local res, err = importer.import(job_for(item), manifest(), { folder = true, mute = true, batch = "b" })
    assert.is_nil(res)
    assert.matches("REAPER could not open .*residual%.wav", err)
    balanced()
    assert.are.same(before, snapshot())
    assert.are.equal(1, #model.undo) -- one undo point, holding no change
  end)

  it("deletes only its own items from a pair of tracks an earlier item of the batch made", function()
    local tr = model.add_track("Loop")
    local x = model.add_item(tr, { file = source, position = 0, length = 1.5 })
    local y = model.add_item(tr, { file = source, position = 3, startoffs = 2, length = 1.5 })
    assert(importer.import(job_for(x, "job-x"), manifest(), { mute = true, batch = "b" }))
    local before = snapshot()
    assert.are.equal(3, #before)
    fail_on_residual()
    local res = importer.import(job_for(y, "job-y"), manifest(), { mute = true, batch = "b" })
    assert.is_nil(res)
    balanced()
    assert.are.same(before, snapshot()) -- the first job's tracks and items stay, y is not muted
    assert.are.equal(0, y.info.B_MUTE)
  end)

  it("leaves nothing behind when the stems do not overlap the item", function()
    local tr = model.add_track("Mix")
    local item = model.add_item(tr, { file = source, position = 0, length = 1 })
    local before = snapshot()
    local res, err = importer.import(job_for(item), manifest({ 2, 4 }), { mute = true })
    assert.is_nil(res)
    assert.matches("does not overlap", err)
    balanced()
    assert.are.same(before, snapshot())
  end)

  it("checks the stem files before touching the project", function()
    local item = model.add_item(model.add_track("Mix"), { file = source, position = 0 })
    local m = manifest()
    m.stems[2].path = dir .. "/gone.wav"
    local res, err = importer.import(job_for(item), m, {})
    assert.is_nil(res)
    assert.matches("stem file missing", err)
    assert.are.equal(0, #model.undo)
    assert.are.equal(1, #model.tracks)
  end)
end)
