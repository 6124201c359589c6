// What of a request the front-end and the log get, and what of the
// front-end's answer the browser gets: never a sandbox's access token or
// cookie (docs/security.md, "The front door"). nginx's maps cannot loop, and
// a request may carry any number of cookies and parameters.
//
// nginx's variables come as njs byte strings, one character per byte, which
// may not be valid UTF-8. What is passed on or logged is cut from them, so
// their bytes stay as they came. They are searched only for ASCII as they
// are; anything more goes through `latin1` first. No regular expression
// reads them: njs 0.7's throw on strings of both kinds, and on offsets past
// a non-ASCII character.
//
// A client sends headers of up to 16 KiB each, and the one worker reads them
// all before it serves anyone else: every step here takes time (and memory)
// in proportion to the length, never to its square.

import fs from 'fs';

// One character per byte of a Buffer (as r.rawVariables gives), or of a
// string's UTF-8 form (where a byte that is not UTF-8 becomes U+FFFD's
// three): ASCII stays as it came. A chunk at a time: built a character at a
// time, njs copies the whole string at each one.
function latin1(bytes) {
    const raw = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
    const chunks = [];
    for (let at = 0; at < raw.length; at += 1024) {
        chunks.push(String.fromCharCode.apply(null, raw.subarray(at, at + 1024)));
    }
    return chunks.join('');
}

// Cookies ignore ports: the browser sends the cookies of every sandbox on
// 127.0.0.1 to each of them. A name is compared as browsers and servers may
// read it: without case, and after the "=" of a nameless cookie.
const BEFORE_NAME = [9, 10, 11, 12, 13, 32, 61];  // whitespace and "="

function isSandboxCookie(pair) {
    let start = 0;
    while (start < pair.length && BEFORE_NAME.includes(pair.charCodeAt(start))) {
        start++;
    }
    return pair.slice(start, start + 8).toLowerCase() === 'sandbox-';
}

// The Cookie header the front-end gets: the request's cookies (every Cookie
// header, as nginx joins them) less every sandbox-* one.
function upstreamCookie(r) {
    return (r.variables.http_cookie || '').split(';').filter((pair) => !isSandboxCookie(pair))
        .map((pair) => pair.trim()).filter((pair) => pair !== '').join('; ');
}

// The front-end may not plant or overwrite a sandbox's cookie, this one's or
// another's, from its answers (a WebSocket upgrade's too). The ingress's own
// answers (the access link's) are not the front-end's.
function dropSandboxSetCookies(r) {
    if (!r.variables.upstream_addr) {
        return;
    }
    const all = r.headersOut['Set-Cookie'];
    const kept = all.filter((cookie) => !isSandboxCookie(cookie));
    if (kept.length !== all.length) {
        delete r.headersOut['Set-Cookie'];
        if (kept.length) {
            r.headersOut['Set-Cookie'] = kept;
        }
    }
}

function isHexPair(text) {
    return text.length === 2 && '0123456789abcdefABCDEF'.includes(text[0])
        && '0123456789abcdefABCDEF'.includes(text[1]);
}

// %XX sequences decoded, malformed ones left as they are, four times over at
// most: a name or token encoded twice or more is found too, and a string
// that unwraps one layer per round (%252525...41) costs four rounds, not one
// per two of its bytes.
function percentDecoded(text) {
    for (let round = 0; round < 4; round++) {
        const parts = text.split('%');
        const decoded = parts[0] + parts.slice(1).map((part) => isHexPair(part.slice(0, 2))
            ? String.fromCharCode(parseInt(part.slice(0, 2), 16)) + part.slice(2) : '%' + part).join('');
        if (decoded === text) {
            break;
        }
        text = decoded;
    }
    return text;
}

// A parameter the ingress reads as the access link's token, as a
// front-end's framework would read it: without case, percent-decoded.
function isTokenParameter(name) {
    return percentDecoded(name).toLowerCase() === 'sandbox_token';
}

// Each parameter of the query in `text` (a target, or a request line, where
// the target ends at a space): its name, and where its value starts and
// ends in `text` (hasValue false: no "=").
function parameters(text) {
    const query = text.indexOf('?');
    if (query < 0) {
        return [];
    }
    const end = text.indexOf(' ', query) < 0 ? text.length : text.indexOf(' ', query);
    let at = query + 1;
    return text.slice(at, end).split('&').map((pair) => {
        const equals = pair.indexOf('=');
        const found = {name: equals < 0 ? pair : pair.slice(0, equals), hasValue: equals >= 0,
                       start: at + equals + 1, end: at + pair.length};
        at += pair.length + 1;
        return found;
    });
}

// "good": a GET or HEAD whose one and only token parameter is this
// sandbox's token; "none": no token parameter at all; anything else, "bad"
// (a wrong token, two, or another sandbox's). None is passed on, so the
// front-end never sees a token in an address.
function login(r) {
    const target = latin1(r.variables.request_uri || '');
    const given = parameters(target).filter((p) => isTokenParameter(p.name));
    if (!given.length) {
        // The token anywhere else in the address (after a ";", in a name
        // such as sandbox_token[], in the path) or in a header the front-end
        // gets is refused too: the front-end never sees it.
        return carriesToken(r, target) || elsewhereInHeaders(r) ? 'bad' : 'none';
    }
    const token = given[0].hasValue ? target.slice(given[0].start, given[0].end) : null;
    const reads = r.method === 'GET' || r.method === 'HEAD';
    return reads && given.length === 1 && token === r.variables.access_token ? 'good' : 'bad';
}

// The sandbox's tokens: the access token, and the API token made of it
// (start.sh), which opens the API only. Neither is passed on or logged.
function tokens(r) {
    return [r.variables.access_token, r.variables.api_token];
}

// Either token is ASCII: without a "%", the text as it came says it all.
function carriesToken(r, text) {
    const plain = text.includes('%') ? percentDecoded(latin1(text)) : text;
    return tokens(r).some((token) => text.includes(token) || plain.includes(token));
}

// Every header but the two that carry the token by right (the cookie, which
// is stripped, and the bearer, which is dropped: upstreamAuthorization).
function elsewhereInHeaders(r) {
    return r.rawHeadersIn.some((header) => !['cookie', 'authorization'].includes(header[0].toLowerCase())
        && carriesToken(r, header[1]));
}

// Where an API request (/v1/) carries the token: "elsewhere" wherever it
// is but the Authorization header (the address, a header's name or value,
// a cookie sent with a bearer), else "none". (nginx itself refuses a second
// Authorization header.) A cookie alone is the browser's, sent on every
// request to 127.0.0.1: that is no-token (the cookie is never enough).
function apiTokenPlace(r) {
    const bearerSent = r.variables.authorization_sent === '1';
    const elsewhere = login(r) !== 'none' || r.rawHeadersIn.some((header) => carriesToken(r, header[0])
        || (header[0].toLowerCase() === 'cookie' && bearerSent && carriesToken(r, header[1])));
    return elsewhere ? 'elsewhere' : 'none';
}

// The Authorization header the front-end gets: none that carries the token,
// in whatever form ("BEARER T", "Bearer T, Bearer x", encoded).
function upstreamAuthorization(r) {
    const value = r.variables.http_authorization || '';
    return carriesToken(r, value) ? '' : value;
}

// A value for the log in which neither token, literal or percent-encoded,
// appears; one that still carries one once decoded is left out whole.
function withoutToken(r, value) {
    const kept = tokens(r).reduce((text, token) => text.split(token).join('...'), value);
    return carriesToken(r, kept) ? '(left out: it carries the access token)' : kept;
}

// Every field of a log line that a client controls (the request line, Host,
// Origin, Sec-Fetch-Site) is at most FIELD_KEPT bytes as nginx writes it
// (escape=default: a quote, a backslash and a byte outside printable ASCII
// are the four of \xNN), cut and ending CUT where longer. A header of up to
// 16 KiB of such bytes was 64 KiB on disk: a few hundred refused requests,
// no token needed, rotated the owner's API calls out of the container's
// log. Cut this short, the lines refusedNth lets through (ITEMISED per
// reason, then one per doubling) are about 1.2 KB each, a few MB in all.
// Cut after the token is left out: a token cut in two would not be found.
const FIELD_KEPT = 256;
const CUT = '...';

function writtenSize(code) {
    return code < 32 || code > 126 || code === 34 || code === 92 ? 4 : 1;
}

function cut(value) {
    let written = 0;
    let fits = 0;  // the characters that fit with CUT after them
    for (let i = 0; i < value.length; i++) {
        written += writtenSize(value.charCodeAt(i));
        if (written > FIELD_KEPT) {
            return value.slice(0, fits) + CUT;
        }
        if (written <= FIELD_KEPT - CUT.length) {
            fits = i + 1;
        }
    }
    return value;
}

function logged(r, value) {
    return cut(withoutToken(r, value));
}

// The request line, with the value of every token parameter left out, this
// sandbox's or another's (its link opened on the wrong port).
function requestLogged(r) {
    const line = r.variables.request || '';
    let kept = '';
    let from = 0;
    // Byte for byte, so that its offsets are the line's.
    parameters(latin1(r.rawVariables.request || '')).forEach((p) => {
        if (p.hasValue && isTokenParameter(p.name)) {
            kept += line.slice(from, p.start) + '...';
            from = p.end;
        }
    });
    return logged(r, kept + line.slice(from));
}

// Refusals are counted by reason in a file each (one worker, which runs
// this to the end before it serves anyone else: no two requests race on a
// count). The n-th refusal of a reason is logged where n is at most
// ITEMISED, or ITEMISED times a power of two: a flood of any size writes a
// few dozen lines, so that it never pushes the owner's API calls and the
// first refusals of each kind out of the log `status` and `audit` read. Its
// line says which refusal of its reason it was (nth=); "" for a request
// that is not logged. Every use of the access link is logged, whatever
// its count: only the token's holder can make one, and `sandbox open`
// (launcher/browser.py) learns from its line that a window without a
// remote protocol got to the sandbox.
const ITEMISED = 100;

function refusedNth(r) {
    if (r.variables.not_forwarded !== '1') {
        return '';
    }
    const file = r.variables.refusal_counts + r.variables.reason;
    let n = 1;
    try {
        n = (parseInt(fs.readFileSync(file, 'utf8'), 10) || 0) + 1;
    } catch (e) {
        // none of this reason yet
    }
    fs.writeFileSync(file, String(n));
    const doubling = n % ITEMISED === 0 && ((n / ITEMISED) & (n / ITEMISED - 1)) === 0;
    return n <= ITEMISED || doubling || r.variables.reason === 'login' ? String(n) : '';
}

// The model a call asked for, as the log of API calls (`sandbox status`)
// has it: a name of at most 64 letters, digits and ._:/+- as it came; any
// other value (text that could pass for another field of the line, a
// whole prompt, not a string) is "(other)".
const MODEL_CHARACTERS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/+-';

function modelLogged(model) {
    if (typeof model !== 'string' || model.length < 1 || model.length > 64) {
        return '(other)';
    }
    for (let i = 0; i < model.length; i++) {
        if (!MODEL_CHARACTERS.includes(model[i])) {
            return '(other)';
        }
    }
    return model;
}

// The most tokens one answer of the API (/v1/) may ask for, as the `chat`
// UI allows: one client's answer may not hold the backend for long.
const MAX_TOKENS = 2048;

// The most values an API body may hold: its objects and arrays, and the
// items and members of each (one more for each comma between them). Tried
// as an attacker would: four bodies of 349,000 empty objects (each under
// 1 MiB) took the one worker's JSON.parse some 30 MB each; the ingress was
// killed for its memory, every request in flight with it, and nginx kept
// the dead worker's API slots (limit_conn) for good: every later call 429.
// The backend's own bound is the same (images/llama-cpp/backend.py): a
// chat of 5,000 messages, or a thousand tools, is well within it.
const MAX_VALUES = 16384;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const MARKS = [0x7b, 0x5b, 0x2c];  // { [ ,

function found(at) {
    return at < 0 ? Infinity : at;
}

// Just past the closing quote of the string whose text starts at `at`; a
// quote after an odd number of backslashes is part of its text.
function afterString(body, at) {
    for (;;) {
        const quote = body.indexOf(QUOTE, at);
        if (quote < 0) {
            return body.length;
        }
        let before = quote;
        while (body[before - 1] === BACKSLASH) {
            before--;
        }
        if ((quote - before) % 2 === 0) {
            return quote + 1;
        }
        at = quote + 1;
    }
}

// How many values a JSON text (a Buffer) holds, counted without parsing it:
// its {, [ and , outside its strings, up to `most` + 1. Each byte is looked
// at once, by Buffer.indexOf, and the loop here runs once per value counted
// and once per quote: 1 MiB of escaped quotes, the slowest body there is,
// costs the one worker some 75 ms of CPU (a review saw 0.55 s go by on a
// loaded machine, the ingress having half a CPU), about what parsing it
// does. (Bytes of UTF-8 past ASCII are never these characters.)
function valuesIn(body, most) {
    const next = [-1, -1, -1];  // where each mark is next found, from where the last look began
    let values = 0;
    let at = 0;
    while (at < body.length) {
        const quote = found(body.indexOf(QUOTE, at));
        for (let k = 0; k < MARKS.length; k++) {
            if (next[k] < at) {
                next[k] = found(body.indexOf(MARKS[k], at));
            }
            while (next[k] < quote) {
                if (++values > most) {
                    return values;
                }
                next[k] = found(body.indexOf(MARKS[k], next[k] + 1));
            }
        }
        if (quote === Infinity) {
            break;
        }
        at = afterString(body, quote + 1);
    }
    return values;
}

// What the backend gets of an API call's body: the client's, parsed here
// and written out again, so the backend reads exactly what was checked, with
// `max_tokens` (and `max_completion_tokens`, where sent) at most MAX_TOKENS,
// and no `grammar` or `logit_bias_type`. Absent, null, not a number, or under 1 (which the backend reads as "up to
// the context's end"), it is MAX_TOKENS too, but for /v1/completions, whose
// absent value is the backend's own small default. The body is at most
// 1 MiB (client_max_body_size) and in memory (client_body_buffer_size).
// {refused, message} instead for a body of more than MAX_VALUES values, or
// one that is no JSON object in UTF-8 (njs reads none deeper than 32
// levels; the backend's parser would take some that njs refuses, NaN
// among them).
function apiBody(r, raw) {
    if (valuesIn(raw, MAX_VALUES) > MAX_VALUES) {
        return {refused: 'too-many-values', message: `the body holds more than ${MAX_VALUES} values (objects, `
                + 'arrays and their items): this API takes at most that many'};
    }
    // JSON is UTF-8: a byte that is not would be read as U+FFFD, three
    // bytes, and the backend given up to three times the body's bound (a
    // review sent 1 MiB of 0xff: 3 MB, a million tokens, at the backend).
    let body = null;
    try {
        const text = raw.toString();
        if (Buffer.byteLength(text) === raw.length) {
            body = JSON.parse(text);
        }
    } catch (e) {
        // said below (njs 0.7 throws here on an empty body too)
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        return {refused: 'not-json', message: 'the body is no JSON object in UTF-8 (or nests deeper than 32 levels)'};
    }
    if ('model' in body) {
        r.variables.api_model = modelLogged(body.model);
    }
    // Without a model the backend answers with its default's file path
    // (/models/NAME.gguf); named, with the policy's alias, as /v1/models lists it.
    if ((body.model === undefined || body.model === null) && r.variables.api_default_model) {
        body.model = r.variables.api_default_model;
    }
    if (r.variables.api_route === 'embeddings') {
        return {body: JSON.stringify(body)};
    }
    // llama.cpp's own `grammar` (no OpenAI client sends it): a malformed one
    // ends the backend's server process (llama-cpp-python 0.3), so one call
    // could keep the UI's chat down; `response_format` still constrains answers.
    delete body.grammar;
    // llama-cpp-python's `logit_bias_type: "tokens"` (no OpenAI client sends
    // it either) has its server turn each key's text into tokens on its
    // event loop, before the call's budget: one key of 1 MiB of special
    // tokens froze the whole server for over a minute. Without it the keys
    // are token ids, as OpenAI has them.
    delete body.logit_bias_type;
    const bounded = (value) => typeof value === 'number' && value >= 1 && value <= MAX_TOKENS;
    if (!bounded(body.max_tokens) && !(r.variables.api_route === 'completions' && !('max_tokens' in body))) {
        body.max_tokens = MAX_TOKENS;
    }
    if ('max_completion_tokens' in body && !bounded(body.max_completion_tokens)) {
        body.max_completion_tokens = MAX_TOKENS;
    }
    return {body: JSON.stringify(body)};
}

// An API call that passed the door's checks (nginx.conf.template): its body
// read and checked here (apiBody), then passed on by the @api location with
// what the backend is to get ($api_body), or refused (400, in the API's own
// form of error, and logged as the door's refusals are: $api_body_refused).
function apiDoor(r) {
    if (r.method === 'POST') {
        const checked = apiBody(r, r.requestBuffer || Buffer.alloc(0));
        if (checked.refused) {
            r.variables.api_body_refused = checked.refused;
            r.headersOut['Content-Type'] = 'application/json';
            r.return(400, JSON.stringify({error: {message: checked.message, type: 'invalid_request_error',
                                                  param: null, code: checked.refused}}) + '\n');
            return;
        }
        r.variables.api_body = checked.body;
    }
    r.internalRedirect('@api');
}

export default {
    apiDoor,
    apiTokenPlace,
    refusedNth,
    upstreamCookie,
    dropSandboxSetCookies,
    login,
    upstreamAuthorization,
    requestLogged,
    hostLogged: (r) => logged(r, r.variables.http_host || ''),
    originLogged: (r) => logged(r, r.variables.http_origin || ''),
    fetchSiteLogged: (r) => logged(r, r.variables.http_sec_fetch_site || ''),
};
