local H = require("helpers")

describe("json", function()
  teardown(function() H.cleanup() end)
  local json
  setup(function() json = H.lib(H.model(), "json") end)

  it("decodes a manifest", function()
    local text = [[{"job_id": "j-1", "engine": "dsp", "sample_rate": 44100, "request": {"prompt": "dr\"ums\u00e9"},
      "stems": [{"name": "drums", "role": "target", "path": "/tmp/a b/drums.wav", "channels": 2,
                 "frames": 132300, "region_start": 0.5, "region_end": 3.5e0}], "code": null, "ok": true}]]
    local m = assert(json.decode(text))
    assert.are.equal("j-1", m.job_id)
    assert.are.equal(44100, m.sample_rate)
    assert.are.equal(math.type(44100), math.type(m.sample_rate))
    assert.are.equal('dr"umsé', m.request.prompt)
    assert.are.equal("/tmp/a b/drums.wav", m.stems[1].path)
    assert.are.equal(3.5, m.stems[1].region_end)
    assert.are.equal(json.null, m.code)
    assert.is_true(m.ok)
  end)

  it("handles surrogate pairs, empty containers, negative exponents", function()
    local v = assert(json.decode('["\\ud83d\\udc15", {}, [], -1.5e-3, 0]'))
    assert.are.equal("🐕", v[1])
    assert.are.same({}, v[2])
    assert.are.equal(-0.0015, v[4])
    assert.are.equal(0, v[5])
  end)

  it("returns nil and a message on bad input", function()
    for _, bad in ipairs({ "", "{", "[1,]", '{"a" 1}', "tru", '"abc', '{"a":1} x', "[01x]", '"\1"' }) do
      local v, err = json.decode(bad)
      assert.is_nil(v, bad)
      assert.is_string(err)
    end
  end)

  it("decodes what a JSON encoder writes", function()
    local v = { a = { 1, 2.5, "x\n" }, b = true, c = "q\"", d = "\1\t" }
    assert.are.same(v, json.decode(H.json_encode(v)))
  end)
end)
