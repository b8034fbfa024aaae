local H = require("helpers")

describe("osc", function()
  teardown(function() H.cleanup() end)
  local osc
  setup(function()
    osc = H.lib(H.model(), "osc")
  end)

  it("encodes the OSC 1.0 example message byte for byte", function()
    -- from the OSC 1.0 specification: /oscillator/4/frequency ,f 440.0
    local data = osc.encode("/oscillator/4/frequency", { 440.0 })
    assert.are.equal("/oscillator/4/frequency\0,f\0\0\67\220\0\0", data)
    -- /foo ,iisff 1000 -1 "hello" 1.234 5.678
    local d2 = osc.encode("/foo", { 1000, -1, "hello", 1.234, 5.678 })
    assert.are.equal(0, #d2 % 4)
    local expect = "/foo\0\0\0\0,iisff\0\0" .. string.pack(">i4i4", 1000, -1) .. "hello\0\0\0"
      .. string.pack(">ff", 1.234, 5.678)
    assert.are.equal(expect, d2)
  end)

  it("pads strings to 4 bytes, always with at least one NUL", function()
    for len = 0, 9 do
      local s = string.rep("x", len)
      local data = osc.encode("/a", { s })
      assert.are.equal(0, #data % 4)
      local m = osc.decode(data)
      assert.are.equal(s, m.args[1])
    end
  end)

  it("round-trips every type", function()
    local data = osc.encode("/t", { 7, -2147483648, 2.5, "s", true, false,
      { tag = "d", value = 1 / 3 }, { tag = "h", value = 1 << 40 }, { tag = "b", value = "abc" }, { tag = "N" } })
    local m = assert(osc.decode(data))
    assert.are.equal("iifsTFdhbN", m.tags)
    assert.are.equal(7, m.args[1])
    assert.are.equal(-2147483648, m.args[2])
    assert.are.equal(2.5, m.args[3])
    assert.are.equal("s", m.args[4])
    assert.is_true(m.args[5])
    assert.is_false(m.args[6])
    assert.are.equal(1 / 3, m.args[7])
    assert.are.equal(1 << 40, m.args[8])
    assert.are.equal("abc", m.args[9])
  end)

  it("keeps UTF-8 text intact", function()
    local m = osc.decode(osc.encode("/p", { "ein Hund bellt – 🐕" }))
    assert.are.equal("ein Hund bellt – 🐕", m.args[1])
  end)

  it("encodes large integers as floats and refuses NUL in strings", function()
    local m = osc.decode(osc.encode("/x", { 1 << 33 }))
    assert.are.equal("f", m.tags)
    assert.has_error(function() osc.encode("/x", { "a\0b" }) end)
    assert.has_error(function() osc.encode("nope", {}) end)
  end)

  it("unpacks bundles, nested ones too", function()
    local a = osc.encode("/reasam/progress", { "job1", 0.5, "separating" })
    local b = osc.encode("/reasam/done", { "job1", "/tmp/m.json" })
    local inner = H.osc_bundle({ b })
    local data = H.osc_bundle({ a, inner }, { 1, 2 })
    local p = assert(osc.decode(data))
    assert.is_true(p.bundle)
    assert.are.same({ 1, 2 }, p.timetag)
    local msgs = osc.messages(data)
    assert.are.equal(2, #msgs)
    assert.are.equal("/reasam/progress", msgs[1].address)
    assert.are.equal("separating", msgs[1].args[3])
    assert.are.equal("/reasam/done", msgs[2].address)
  end)

  it("rejects malformed packets without raising", function()
    local good = osc.encode("/reasam/pong", { "1.0", "dsp", "cpu", "ready" })
    local bad = {
      "", "abc", "/a", good:sub(1, #good - 4), "#bundle\0", "noslash\0,\0\0\0",
      "/a\0\0,i\0\0", "/a\0\0,s\0\0abcd", "/a\0\0,z\0\0\0\0\0\0",
      "#bundle\0" .. string.rep("\0", 8) .. string.pack(">i4", 400) .. "/a\0\0",
      "/a\0\0,b\0\0" .. string.pack(">i4", 100),
    }
    for _, data in ipairs(bad) do
      local ok, m = pcall(osc.decode, data)
      assert.is_true(ok)
      assert.is_nil(m, ("accepted %q"):format(data))
      assert.are.same({}, osc.messages(data))
    end
    -- random garbage never raises
    math.randomseed(7)
    for _ = 1, 2000 do
      local n = math.random(0, 12) * 4
      local t = {}
      for i = 1, n do t[i] = string.char(math.random(0, 255)) end
      local data = table.concat(t)
      if math.random() < 0.5 then data = "/x\0\0" .. data end
      assert.is_true((pcall(osc.decode, data)))
    end
  end)

  it("accepts a message without type tags (old style)", function()
    local m = osc.decode("/ping\0\0\0")
    assert.are.equal("/ping", m.address)
    assert.are.equal(0, #m.args)
  end)
end)
