-- wrk: POST /api/carts/{cart}/items round-robin over the carts in carts.txt, one item each.
local carts = {}
for line in io.lines(os.getenv("CARTS_FILE")) do carts[#carts + 1] = line end
local products = { "bench-a", "bench-b", "bench-c" }
local token = os.getenv("TOKEN")
local n = 0
request = function()
  n = n + 1
  local cart = carts[(n % #carts) + 1]
  local product = products[(math.floor(n / #carts) % #products) + 1]
  return wrk.format("POST", "/api/carts/" .. cart .. "/items",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" },
    '{"product_id":"' .. product .. '","quantity":1}')
end
