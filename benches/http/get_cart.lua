-- wrk: GET /api/carts/{cart} round-robin over the carts in carts.txt.
local carts = {}
for line in io.lines(os.getenv("CARTS_FILE")) do carts[#carts + 1] = line end
local token = os.getenv("TOKEN")
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/carts/" .. carts[(n % #carts) + 1], { ["Authorization"] = "Bearer " .. token })
end
