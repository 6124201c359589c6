# Everything nginx writes (its error lines, and the refusal and API-call
# lines it logs to stdout) passes through here on its way to the
# container's log, which the token must never reach: nginx's own error lines
# quote the request line and Host of the request at fault (a body too
# large, a UI that is down), and only the access lines' fields go through
# sandbox.js. A line that carries the token percent-encoded (a Host or
# Referer of %XX escapes) is left out whole. Run by start.sh (LC_ALL=C: one
# character per byte).
#
# nginx's one worker waits on this filter to take its output: every step
# costs time in proportion to a line's length, never its square (mawk copies
# the whole string at each `s = s x`, so no string is built a piece at a time).
BEGIN { token = ENVIRON["SANDBOX_ACCESS_TOKEN"]
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

# nginx says so of every request whose Content-Length is over the bound,
# before any rule of ours runs: any local program, with no token, could
# fill the log with it. The first 100 are kept; the refusal log has each
# (413), counted and bounded (sandbox.js, refusedNth).
/^[0-9\/]+ [0-9:]+ \[error\] [0-9]+#[0-9]+: \*[0-9]+ client intended to send too large body: / {
  if (++too_large > 100) next }

{ line = $0
  # The token is letters, digits, "_" and "-" (start.sh checks it): all
  # literal in a regular expression.
  gsub(token, "...", line)
  # Four rounds at most: a token encoded twice or more is found too, and a
  # line that unwraps one layer per round (%252525...41) costs four rounds.
  plain = line
  for (round = 0; round < 4 && index(plain, "%") > 0; round++) {
    again = decoded(plain); if (again == plain) break; plain = again }
  if (index(plain, token) > 0) line = "ingress: a line of nginx's log left out: it carries the access token"
  print line; fflush() }
