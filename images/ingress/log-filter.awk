# Everything nginx writes (its error lines, and the refusal and API-call
# lines it logs to stdout) passes through here on its way to the
# container's log, which the tokens (the access token, and the API token
# made of it) must never reach: nginx's own error lines
# quote the request line and Host of the request at fault (a body too
# large, a UI that is down), and only the access lines' fields go through
# sandbox.js. A line that carries the token percent-encoded (a Host or
# Referer of %XX escapes) is left out whole. Run by start.sh (LC_ALL=C: one
# character per byte).
#
# nginx's one worker waits on this filter to take its output: every step
# costs time in proportion to a line's length, never its square (mawk copies
# the whole string at each `s = s x`, so no string is built a piece at a time).
BEGIN { split("SANDBOX_ACCESS_TOKEN SANDBOX_API_TOKEN", names, " ")
        for (i = 1; i <= 2; i++) if (ENVIRON[names[i]] != "") tokens[++count] = ENVIRON[names[i]]
        for (i = 1; i < 256; i++) byte[sprintf("%02x", i)] = sprintf("%c", i) }

# parts[from..to] joined, halves first: each byte is copied once per level
# of halving (log2 of the count), not once per part after it.
function joined(parts, from, to,    middle) {
  if (from > to) return ""
  if (from == to) return parts[from]
  middle = int((from + to) / 2)
  return joined(parts, from, middle) joined(parts, middle + 1, to)
}

# One round of %XX decoding, malformed escapes left as they are (as
# sandbox.js's percentDecoded reads them).
function decoded(s,    parts, n, i, pair) {
  n = split(s, parts, "%")
  for (i = 2; i <= n; i++) {
    pair = tolower(substr(parts[i], 1, 2))
    parts[i] = (pair in byte) ? byte[pair] substr(parts[i], 3) : "%" parts[i]
  }
  return joined(parts, 1, n)
}

# nginx's own lines ("2026/12/01 10:00:00 [error] 7#7: *12 MESSAGE, client:
# ..."): any local program, with no token, makes it write some, as often as
# it likes (a body over the bound: "client intended to send too large
# body"; more connections than it takes: "worker_connections are not
# enough"), and could fill the log with them, pushing the owner's records
# out. So each kind is kept for its first 100 lines, then one at each
# doubling (the 128th, the 256th, ...), as the refusals are (sandbox.js,
# refusedNth). The kind is the message's words before the first "," ":" or
# quote, numbers made N: nginx's own text, before any of a client's.
match($0, /^[0-9\/]+ [0-9:]+ \[[a-z]+\] [0-9]+#[0-9]+: (\*[0-9]+ )?/) {
  kind = substr($0, RLENGTH + 1, 100)
  sub(/[,:"].*/, "", kind)
  gsub(/[0-9]+/, "N", kind)
  if (++lines_of[kind] > 100) {
    if (!(kind in next_kept)) next_kept[kind] = 128
    if (lines_of[kind] < next_kept[kind]) next
    next_kept[kind] *= 2
  }
}

{ line = $0
  # Each token is letters, digits, "_" and "-" (start.sh checks the access
  # token and makes the API token in hex): all literal in a regular expression.
  for (t = 1; t <= count; t++) gsub(tokens[t], "...", line)
  # Four rounds at most: a token encoded twice or more is found too, and a
  # line that unwraps one layer per round (%252525...41) costs four rounds.
  plain = line
  for (round = 0; round < 4 && index(plain, "%") > 0; round++) {
    again = decoded(plain); if (again == plain) break; plain = again }
  for (t = 1; t <= count; t++)
    if (index(plain, tokens[t]) > 0) line = "ingress: a line of nginx's log left out: it carries the access token"
  print line; fflush() }
