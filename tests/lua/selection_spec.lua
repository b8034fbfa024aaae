-- The selection -> request mapping and the import placement, without a daemon.
local H = require("helpers")
local wav = require("wav")

local function close(a, b, tol) return math.abs(a - b) <= (tol or 1e-9) end

describe("selection mapping", function()
  local dir, file, model, selection, importer

  setup(function()
    dir = H.tmpdir("sel")
    file = dir .. "/four-seconds.wav"
    local rate = 8000
    local s = {}
    for i = 1, rate * 4 * 2 do s[i] = 0 end
    wav.write(file, rate, 2, s)
  end)
  teardown(function()
    H.rmtree(dir)
    H.cleanup()
  end)

  before_each(function()
    model = H.model()
    selection = H.lib(model, "selection")
    importer = H.lib(model, "importer")
  end)

  local function map(spec, opts)
    local tr = model.add_track("src")
    spec.file = spec.file or file
    local item = model.add_item(tr, spec)
    return selection.map_item(item, opts)
  end

  it("maps a whole item to the whole file", function()
    local r = assert(map({ position = 10 }))
    assert.are.equal(file, r.path)
    assert.is_true(close(r.region_start, 0))
    assert.is_true(close(r.region_end, 4))
    assert.are.same({}, r.spans)
  end)

  it("maps a trimmed item through D_STARTOFFS and D_LENGTH", function()
    local r = assert(map({ position = 3, startoffs = 1.0, length = 2 }))
    assert.is_true(close(r.region_start, 1))
    assert.is_true(close(r.region_end, 3))
  end)

  it("multiplies the length by D_PLAYRATE", function()
    local r = assert(map({ position = 3, startoffs = 0.5, length = 1, playrate = 2 }))
    assert.is_true(close(r.region_start, 0.5))
    assert.is_true(close(r.region_end, 2.5))
    local r2 = assert(map({ position = 0, startoffs = 0.25, length = 2, playrate = 0.5 }))
    assert.is_true(close(r2.region_end, 1.25))
  end)

  it("clamps an unlooped item that runs past the end of its source", function()
    local r = assert(map({ position = 0, startoffs = 3, length = 3 }))
    assert.is_true(close(r.region_start, 3))
    assert.is_true(close(r.region_end, 4))
  end)

  it("clamps a negative start offset (silence before the source) to 0", function()
    local r = assert(map({ position = 5, startoffs = -1, length = 3 }))
    assert.is_true(close(r.region_start, 0))
    assert.is_true(close(r.region_end, 2))
  end)

  it("refuses a looped item that plays past the end of its source", function()
    local r, note, kind = map({ position = 0, startoffs = 2, length = 5, loop = true })
    assert.is_nil(r)
    assert.are.equal("refused", kind)
    assert.matches("loops its source past the end", note)
    -- a looped item inside its source is fine
    assert.is_table((map({ position = 0, startoffs = 1, length = 2, loop = true })))
  end)

  it("walks section parents and adds their offset", function()
    local r = assert(map({ position = 0, section = { 1.0, 2.0 }, startoffs = 0.5, length = 1 }))
    assert.are.equal(file, r.path)
    assert.is_true(close(r.region_start, 1.5))
    assert.is_true(close(r.region_end, 2.5))
    assert.is_true(close(r.section_offset, 1.0))
    -- the section's length bounds the region
    local r2 = assert(map({ position = 0, section = { 1.0, 2.0 }, startoffs = 1.5, length = 3 }))
    assert.is_true(close(r2.region_end, 3.0))
  end)

  it("refuses reversed takes and stretch markers with a clear message", function()
    local r, note, kind = map({ position = 0, reversed = true })
    assert.is_nil(r)
    assert.are.equal("refused", kind)
    assert.matches("reversed", note)
    r, note, kind = map({ position = 0, stretch_markers = 2 })
    assert.is_nil(r)
    assert.are.equal("refused", kind)
    assert.matches("stretch markers", note)
  end)

  it("skips MIDI and empty items with a note", function()
    local tr = model.add_track("midi")
    local item = model.add_item(tr, { midi = true, position = 0, length = 2 })
    local r, note, kind = selection.map_item(item)
    assert.is_nil(r)
    assert.are.equal("skipped", kind)
    assert.matches("MIDI", note)
    local empty = model.add_item(tr, { position = 4, length = 1, file = file })
    empty.takes, empty.active = {}, nil
    r, note = selection.map_item(empty)
    assert.is_nil(r)
    assert.matches("empty", note)
  end)

  it("maps the time selection to a + span in source seconds", function()
    -- item at 10 s plays the file from 1 s at double speed; the time selection 11-12 s of the
    -- project is file time 1 + 2*(1..2) = 3..5 (clipped to the item's region 1..4+)
    local r = assert(map({ position = 10, startoffs = 1, length = 1.5, playrate = 2 }, { span_project = { 10.5, 11 } }))
    assert.are.same({ "+2:3" }, r.spans)
    assert.is_true(close(r.region_start, 1))
    assert.is_true(close(r.region_end, 4))
    local none, note = map({ position = 0, length = 1 }, { span_project = { 20, 21 } })
    assert.is_nil(none)
    assert.matches("does not overlap", note)
  end)

  it("limits the region to the time selection when asked", function()
    local r = assert(map({ position = 10, startoffs = 0.5, length = 3 }, { limit = { 11, 12 } }))
    assert.is_true(close(r.region_start, 1.5))
    assert.is_true(close(r.region_end, 2.5))
  end)

  it("collects every selected item with notes for the rest", function()
    local tr = model.add_track("a")
    model.add_item(tr, { file = file, position = 0 })
    model.add_item(tr, { midi = true, position = 5, length = 1 })
    model.add_item(tr, { file = file, position = 9, reversed = true })
    model.add_item(tr, { file = file, position = 20, selected = false })
    local reqs, notes, refused = selection.collect()
    assert.are.equal(1, #reqs)
    assert.are.equal(2, #notes)
    assert.are.equal(1, refused)
  end)

  describe("placement", function()
    it("puts the stem exactly under the item", function()
      local r = assert(map({ position = 7, startoffs = 1.25, length = 1.5, playrate = 1.5 }))
      local p = importer.placement(r, { region_start = r.region_start, region_end = r.region_end }, 8000)
      assert.is_true(close(p.position, 7))
      assert.is_true(close(p.length, 1.5))
      assert.is_true(close(p.startoffs, 0))
      assert.are.equal(1.5, p.playrate)
    end)

    it("starts later when the item begins before its source", function()
      local r = assert(map({ position = 5, startoffs = -1, length = 3, playrate = 2 }))
      local p = importer.placement(r, { region_start = r.region_start, region_end = r.region_end }, 8000)
      assert.is_true(close(p.position, 5.5))
      assert.is_true(close(p.length, 2))
      assert.is_true(close(p.startoffs, 0))
    end)

    it("offsets into a stem that covers more than the item", function()
      local r = assert(map({ position = 2, startoffs = 1, length = 1, playrate = 2 }))
      -- a stem of the whole file
      local p = importer.placement(r, { region_start = 0, region_end = 4, frames = 32000 }, 8000)
      assert.is_true(close(p.position, 2))
      assert.is_true(close(p.length, 1))
      assert.is_true(close(p.startoffs, 1))
    end)

    it("ends where the stem's frames end", function()
      local r = assert(map({ position = 0, startoffs = 0, length = 4 }))
      local p = importer.placement(r, { region_start = 0, region_end = 4, frames = 16000 }, 8000)
      assert.is_true(close(p.length, 2))
    end)
  end)
end)
