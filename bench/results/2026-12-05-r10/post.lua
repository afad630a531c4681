wrk.method = "POST"
wrk.body = string.rep("x", 64)
