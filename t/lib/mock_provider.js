#!/usr/bin/env node
// Mock LLM provider for the Smartflow test suites and benchmark.
//
// Imitates the OpenAI, Anthropic and Gemini HTTP APIs (status codes, headers,
// JSON bodies, SSE framing, error bodies) with deterministic output, and lets
// each request pick failure modes through x-mock-* request headers.
//
// Usage: node t/lib/mock_provider.js --port 1985 [--host 127.0.0.1] [--watch-parent]
//
// Note: chunked transfer encoding (and so a detectable mid-stream drop) needs
// HTTP/1.1 from the client; an HTTP/1.0 upstream connection is read to EOF.
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { setTimeout: sleep } = require('node:timers/promises');

// ---------------------------------------------------------------- options

function usage(code, msg) {
    if (msg) process.stderr.write(`mock_provider: ${msg}\n`);
    process.stderr.write('usage: node mock_provider.js --port N [--host ADDR] [--watch-parent]\n');
    process.exit(code);
}

function parseArgs(argv) {
    const opts = { port: 1985, host: '127.0.0.1', watchParent: false };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const eq = arg.indexOf('=');
        const name = eq > 0 ? arg.slice(0, eq) : arg;
        const value = () => {
            const v = eq > 0 ? arg.slice(eq + 1) : argv[++i];
            if (v === undefined) usage(2, `${name} needs a value`);
            return v;
        };
        switch (name) {
        case '--port': opts.port = Number(value()); break;
        case '--host': opts.host = value(); break;
        case '--watch-parent': opts.watchParent = true; break;
        case '-h': case '--help': usage(0); break;
        default: usage(2, `unknown argument: ${arg}`);
        }
    }
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage(2, 'bad --port');
    return opts;
}

// With MOCK_REQUIRE_KEY set, OpenAI endpoints demand "Authorization: Bearer <key>".
const REQUIRED_KEY = process.env.MOCK_REQUIRE_KEY || '';

// ---------------------------------------------------------------- helpers

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function randomId(len) {
    let s = '';
    for (const b of crypto.randomBytes(len)) s += ALNUM[b % ALNUM.length];
    return s;
}

const nowSec = () => Math.floor(Date.now() / 1000);
const countWords = (text) => (String(text).match(/\S+/g) || []).length;
// Word-sized pieces whose concatenation is exactly the input.
const textPieces = (text) => text.match(/\s*\S+|\s+/g) || [];
// Pieces of a JSON string the way providers stream tool arguments: {" location ":" Paris "}
const jsonPieces = (json) => json.match(/\w+|\W+/g) || [];

const WORDS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel',
    'india', 'juliet', 'kilo', 'lima', 'mike', 'november', 'oscar', 'papa'];

function makeWords(n) {
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = WORDS[i % WORDS.length];
    return out.join(' ');
}

// Text of a message content: a string, or an array of parts whose text parts are joined.
function contentText(content) {
    if (typeof content === 'string') return content;
    if (!Array.isArray(content)) return '';
    const texts = [];
    for (const part of content) {
        if (typeof part === 'string') texts.push(part);
        else if (part && typeof part.text === 'string'
                 && (part.type === undefined || part.type === 'text' || part.type === 'input_text')) {
            texts.push(part.text);
        }
    }
    return texts.join(' ');
}

// Header values must be printable ASCII; anything else is percent-encoded.
const headerSafe = (v) => (/^[\x20-\x7e]*$/.test(v) ? v : encodeURIComponent(v));

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// ---------------------------------------------------------------- error bodies

const OPENAI_ERRORS = {
    400: ['invalid_request_error', null, 'The request was invalid.'],
    401: ['invalid_request_error', 'invalid_api_key', 'Incorrect API key provided. You can find your API key in your account settings.'],
    403: ['invalid_request_error', 'unsupported_country_region_territory', 'Country, region, or territory not supported.'],
    404: ['invalid_request_error', 'model_not_found', 'The model does not exist or you do not have access to it.'],
    429: ['requests', 'rate_limit_exceeded', 'Rate limit reached for requests per min (RPM). Please try again in 1s.'],
    500: ['server_error', null, 'The server had an error while processing your request.'],
    502: ['server_error', null, 'Bad gateway.'],
    503: ['server_error', null, 'The engine is currently overloaded, please try again later.'],
};

const ANTHROPIC_ERRORS = {
    400: ['invalid_request_error', 'The request was invalid.'],
    401: ['authentication_error', 'invalid x-api-key'],
    403: ['permission_error', 'Your API key does not have permission to use the specified resource.'],
    404: ['not_found_error', 'The requested resource could not be found.'],
    413: ['request_too_large', 'Request exceeds the maximum allowed number of bytes.'],
    429: ['rate_limit_error', 'This request would exceed the rate limit for your organization.'],
    500: ['api_error', 'Internal server error'],
    503: ['overloaded_error', 'Overloaded'],
    529: ['overloaded_error', 'Overloaded'],
};

const GEMINI_ERRORS = {
    400: ['INVALID_ARGUMENT', 'Request contains an invalid argument.'],
    401: ['UNAUTHENTICATED', 'Request had invalid authentication credentials.'],
    403: ['PERMISSION_DENIED', 'The caller does not have permission.'],
    404: ['NOT_FOUND', 'Requested entity was not found.'],
    429: ['RESOURCE_EXHAUSTED', 'Resource has been exhausted (e.g. check quota).'],
    499: ['CANCELLED', 'The operation was cancelled.'],
    500: ['INTERNAL', 'An internal error has occurred.'],
    501: ['UNIMPLEMENTED', 'Method not implemented.'],
    503: ['UNAVAILABLE', 'The model is overloaded. Please try again later.'],
    504: ['DEADLINE_EXCEEDED', 'Deadline expired before operation could complete.'],
};

// Provider-shaped error body; `message`, `param` and `code` override the defaults.
function errorBody(provider, status, over = {}) {
    const server = status >= 500;
    if (provider === 'anthropic') {
        const [type, message] = ANTHROPIC_ERRORS[status] || [server ? 'api_error' : 'invalid_request_error', 'Request failed.'];
        return { type: 'error', error: { type, message: over.message || message } };
    }
    if (provider === 'gemini') {
        const [st, message] = GEMINI_ERRORS[status] || [server ? 'INTERNAL' : 'INVALID_ARGUMENT', 'Request failed.'];
        return { error: { code: status, message: over.message || message, status: st } };
    }
    const [type, code, message] = OPENAI_ERRORS[status] || [server ? 'server_error' : 'invalid_request_error', null, 'Request failed.'];
    return {
        error: {
            message: over.message || message,
            type,
            param: over.param === undefined ? null : over.param,
            code: over.code === undefined ? code : over.code,
        },
    };
}

const REASONS = { 529: 'Overloaded' };

function sendError(ctx, status, over) {
    const headers = {};
    if (status === 429 || ctx.sw.retryAfter) headers['retry-after'] = headerSafe(ctx.sw.retryAfter || '1');
    const body = errorBody(ctx.provider, status, over);
    return sendJson(ctx, status, body, headers);
}

const invalid = (ctx, message, param, code) => sendError(ctx, 400, { message, param, code });

// ---------------------------------------------------------------- transmission

function toBuffer(x) {
    return Buffer.isBuffer(x) ? x : Buffer.from(x);
}

function splitBuffer(buf, size) {
    const out = [];
    for (let off = 0; off < buf.length; off += size) out.push(buf.subarray(off, off + size));
    return out;
}

const gone = (res) => res.destroyed || !res.socket || res.socket.destroyed;

// Write one piece and wait until it has been handed to the socket (or the socket closed).
function writePiece(res, piece) {
    return new Promise((resolve) => {
        if (gone(res)) return resolve();
        const done = () => { res.off('close', done); resolve(); };
        res.once('close', done);
        res.write(piece, done);
    });
}

// An event whose JSON is sent over n "data:" lines, as the SSE spec allows and
// some providers do: the JSON is printed with line breaks and cut into n
// parts, which a reader joins with "\n" back into the same JSON value.
function dataLines(piece, n) {
    return toBuffer(piece).toString('utf8').replace(/^data: (\{.*\})$/gm, (line, json) => {
        const lines = JSON.stringify(JSON.parse(json), null, 1).split('\n');
        const per = Math.ceil(lines.length / n);
        const out = [];
        for (let i = 0; i < lines.length; i += per) out.push('data: ' + lines.slice(i, i + per).join(''));
        return out.join('\n');
    });
}

// Send a response made of `pieces` (SSE events for streams, one buffer otherwise),
// applying the data lines, split, chunk delay and drop switches.
async function transmit(ctx, status, headers, pieces, streaming) {
    const { res, sw } = ctx;
    if (streaming && sw.dataLines > 1) pieces = pieces.map((p) => dataLines(p, sw.dataLines));
    pieces = pieces.map(toBuffer);
    const dropping = sw.drop === 'mid-stream' || sw.drop === 'body';

    if (dropping) {
        if (streaming && !sw.split) {
            pieces = pieces.slice(0, Math.max(1, pieces.length >> 1));
        } else {
            const all = Buffer.concat(pieces);
            pieces = [all.subarray(0, all.length >> 1)];
        }
    }
    let gap = streaming ? sw.chunkDelay : 0;
    if (sw.split) {
        pieces = splitBuffer(Buffer.concat(pieces), sw.split);
        gap = Math.max(gap, 2);
    }
    if (sw.lead) {
        pieces = [...Array(sw.lead).fill(Buffer.from('\n')), ...pieces];
        if (headers['content-length'] !== undefined) {
            headers = { ...headers, 'content-length': String(Number(headers['content-length']) + sw.lead) };
        }
        gap = Math.max(gap, 50);
    }

    if (gone(res)) return;
    res.writeHead(status, REASONS[status] || http.STATUS_CODES[status] || 'Unknown', headers);
    if (!streaming && !sw.split && !dropping && !sw.lead) {
        res.end(pieces[0]);
        return;
    }
    if (streaming || sw.lead) res.flushHeaders();
    for (let i = 0; i < pieces.length; i++) {
        if (i > 0 && gap) await sleep(gap);
        if (gone(res)) return;
        await writePiece(res, pieces[i]);
    }
    if (dropping) {
        if (res.socket) res.socket.destroy();
        return;
    }
    res.end();
}

function sendJson(ctx, status, obj, headers = {}) {
    const buf = Buffer.from(JSON.stringify(obj));
    const type = ctx.provider === 'gemini' ? 'application/json; charset=UTF-8' : 'application/json';
    return transmit(ctx, status,
        { 'content-type': type, 'content-length': String(buf.length), ...headers }, [buf], false);
}

function sendStream(ctx, events, contentType) {
    const type = contentType
        || (ctx.provider === 'gemini' ? 'text/event-stream' : 'text/event-stream; charset=utf-8');
    return transmit(ctx, 200, { 'content-type': type, 'cache-control': 'no-cache' }, events, true);
}

const sseData = (obj) => `data: ${JSON.stringify(obj)}\n\n`;
const sseEvent = (name, obj) => `event: ${name}\ndata: ${JSON.stringify(obj)}\n\n`;

// ---------------------------------------------------------------- reply planning

// Decide what the assistant answers: a tool call when tools are offered and the
// final turn is a user text mentioning "weather" (`finalUserText`), else the text
// picked by the switches, by default "mock reply to: <last user text>".
function planReply(ctx, { texts, lastUserText, finalUserText, toolName }) {
    const sw = ctx.sw;
    const promptTokens = Math.max(1, texts.reduce((n, t) => n + countWords(t), 0));
    if (toolName && /\bweather\b/i.test(finalUserText)) {
        const args = sw.toolArgs || { location: 'Paris' };
        const json = JSON.stringify(args);
        const completionTokens = countWords(toolName) + (json.match(/\w+/g) || []).length;
        return { tool: { name: toolName, args, json }, text: null, promptTokens, completionTokens };
    }
    let text;
    if (sw.reply !== null) text = sw.reply;
    else if (sw.words !== null) text = makeWords(sw.words);
    else text = `mock reply to: ${lastUserText}`;
    return { tool: null, text, promptTokens, completionTokens: countWords(text) };
}

function requireJson(ctx) {
    if (ctx.body !== undefined) return true;
    const message = {
        openai: 'We could not parse the JSON body of your request. The API expects a JSON object.',
        anthropic: 'There was an error parsing the body of your request: invalid JSON.',
        gemini: 'Invalid JSON payload received.',
    }[ctx.provider];
    sendError(ctx, 400, { message });
    return false;
}

// ---------------------------------------------------------------- OpenAI

function openaiUsage(plan) {
    return {
        prompt_tokens: plan.promptTokens,
        completion_tokens: plan.completionTokens,
        total_tokens: plan.promptTokens + plan.completionTokens,
    };
}

function openaiModelCheck(ctx) {
    if (typeof ctx.body.model === 'string' && ctx.body.model) return true;
    invalid(ctx, 'You must provide a model parameter.', null, null);
    return false;
}

function openaiChat(ctx) {
    if (!requireJson(ctx) || !openaiModelCheck(ctx)) return;
    const b = ctx.body;
    if (!Array.isArray(b.messages) || b.messages.length === 0) {
        return invalid(ctx, "Missing required parameter: 'messages'.", 'messages', 'missing_required_parameter');
    }
    // the reasoning models (o1, o3, o4, gpt-5) refuse max_tokens, as the real API does
    if (b.max_tokens !== undefined && /^(o\d|gpt-5)/.test(b.model)) {
        return invalid(ctx, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            'max_tokens', 'unsupported_parameter');
    }
    const msgs = b.messages.filter(isObject);
    const last = msgs[msgs.length - 1];
    const lastUser = [...msgs].reverse().find((m) => m.role === 'user' && contentText(m.content));
    const tool = Array.isArray(b.tools) && b.tools.find((t) => t && t.function && t.function.name);
    const plan = planReply(ctx, {
        texts: msgs.map((m) => contentText(m.content)),
        lastUserText: lastUser ? contentText(lastUser.content) : '',
        finalUserText: last && last.role === 'user' ? contentText(last.content) : '',
        toolName: tool ? tool.function.name : null,
    });

    const id = `chatcmpl-${randomId(29)}`;
    const created = nowSec();
    const model = b.model;
    const finish = plan.tool ? 'tool_calls' : 'stop';
    const callId = `call_${randomId(24)}`;

    if (!b.stream) {
        const message = plan.tool
            ? { role: 'assistant', content: null, tool_calls: [{ id: callId, type: 'function', function: { name: plan.tool.name, arguments: plan.tool.json } }], refusal: null }
            : { role: 'assistant', content: plan.text, refusal: null };
        return sendJson(ctx, 200, {
            id, object: 'chat.completion', created, model,
            choices: [{ index: 0, message, logprobs: null, finish_reason: finish }],
            usage: openaiUsage(plan),
            system_fingerprint: 'fp_mock',
        });
    }

    const withUsage = !!(b.stream_options && b.stream_options.include_usage);
    const chunk = (delta, finishReason = null) => sseData({
        id, object: 'chat.completion.chunk', created, model, system_fingerprint: 'fp_mock',
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
        ...(withUsage ? { usage: null } : {}),
    });
    const events = [];
    if (plan.tool) {
        events.push(chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, id: callId, type: 'function', function: { name: plan.tool.name, arguments: '' } }], refusal: null }));
        for (const p of jsonPieces(plan.tool.json)) events.push(chunk({ tool_calls: [{ index: 0, function: { arguments: p } }] }));
    } else {
        events.push(chunk({ role: 'assistant', content: '', refusal: null }));
        for (const p of textPieces(plan.text)) events.push(chunk({ content: p }));
    }
    events.push(chunk({}, finish));
    if (withUsage) {
        events.push(sseData({ id, object: 'chat.completion.chunk', created, model, system_fingerprint: 'fp_mock', choices: [], usage: openaiUsage(plan) }));
    }
    events.push('data: [DONE]\n\n');
    return sendStream(ctx, events);
}

function openaiCompletion(ctx) {
    if (!requireJson(ctx) || !openaiModelCheck(ctx)) return;
    const b = ctx.body;
    let prompt = b.prompt === undefined ? '' : b.prompt;
    if (Array.isArray(prompt)) prompt = prompt.filter((p) => typeof p === 'string').join(' ');
    if (typeof prompt !== 'string') prompt = '';
    const plan = planReply(ctx, { texts: [prompt], lastUserText: prompt, finalUserText: '', toolName: null });

    const id = `cmpl-${randomId(29)}`;
    const created = nowSec();
    const model = b.model;
    if (!b.stream) {
        return sendJson(ctx, 200, {
            id, object: 'text_completion', created, model,
            choices: [{ text: plan.text, index: 0, logprobs: null, finish_reason: 'stop' }],
            usage: openaiUsage(plan),
        });
    }
    const withUsage = !!(b.stream_options && b.stream_options.include_usage);
    const chunk = (text, finishReason = null) => sseData({
        id, object: 'text_completion', created, model,
        choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }],
        ...(withUsage ? { usage: null } : {}),
    });
    const events = textPieces(plan.text).map((p) => chunk(p));
    events.push(chunk('', 'stop'));
    if (withUsage) events.push(sseData({ id, object: 'text_completion', created, model, choices: [], usage: openaiUsage(plan) }));
    events.push('data: [DONE]\n\n');
    return sendStream(ctx, events);
}

// Deterministic unit vector of `dim` float32 values derived from SHA-256 of the text.
function embed(text, dim) {
    const v = new Float64Array(dim);
    let norm = 0;
    for (let i = 0; i < dim; i += 8) {
        const h = crypto.createHash('sha256').update(`${i / 8}:${text}`).digest();
        for (let j = 0; j < 8 && i + j < dim; j++) {
            const x = h.readUInt32LE(j * 4) / 0xffffffff * 2 - 1;
            v[i + j] = x;
            norm += x * x;
        }
    }
    norm = Math.sqrt(norm) || 1;
    return Array.from(v, (x) => Math.fround(x / norm));
}

function openaiEmbeddings(ctx) {
    if (!requireJson(ctx) || !openaiModelCheck(ctx)) return;
    const b = ctx.body;
    const input = b.input;
    let items;   // [{ text, tokens }]
    const tokenArray = (a) => Array.isArray(a) && a.length > 0 && a.every((n) => Number.isInteger(n));
    if (typeof input === 'string') items = [input];
    else if (tokenArray(input)) items = [input];
    else if (Array.isArray(input) && input.length > 0
             && input.every((x) => typeof x === 'string' || tokenArray(x))) items = input;
    else return invalid(ctx, "Missing or invalid required parameter: 'input'.", 'input', 'missing_required_parameter');

    let dim = 16;
    if (b.dimensions !== undefined) {
        if (!Number.isInteger(b.dimensions) || b.dimensions < 1 || b.dimensions > 8192) {
            return invalid(ctx, "Invalid value for 'dimensions': must be an integer between 1 and 8192.", 'dimensions', 'invalid_value');
        }
        dim = b.dimensions;
    }
    const base64 = b.encoding_format === 'base64';
    let tokens = 0;
    const data = items.map((item, index) => {
        const text = typeof item === 'string' ? item : `tokens:${item.join(',')}`;
        tokens += typeof item === 'string' ? Math.max(1, countWords(item)) : item.length;
        const vec = /^mock-words/.test(b.model) ? embedWords(text, dim) : embed(text, dim);
        let embedding = vec;
        if (base64) {
            const buf = Buffer.alloc(dim * 4);
            vec.forEach((x, i) => buf.writeFloatLE(x, i * 4));
            embedding = buf.toString('base64');
        }
        return { object: 'embedding', index, embedding };
    });
    return sendJson(ctx, 200, {
        object: 'list', data, model: b.model, usage: { prompt_tokens: tokens, total_tokens: tokens },
    });
}

const MODELS = [
    ['gpt-4o', 1715367049], ['gpt-4o-mini', 1721172741], ['gpt-4.1', 1744316542],
    ['gpt-3.5-turbo-instruct', 1692901427], ['text-embedding-3-small', 1705948997],
];

function openaiModels(ctx) {
    return sendJson(ctx, 200, {
        object: 'list',
        data: MODELS.map(([id, created]) => ({ id, object: 'model', created, owned_by: 'system' })),
    });
}

// ---------------------------------------------------------------- Anthropic

function anthropicMessages(ctx) {
    if (!ctx.req.headers['anthropic-version']) return invalid(ctx, 'anthropic-version: header is required');
    if (!requireJson(ctx)) return;
    const b = ctx.body;
    if (typeof b.model !== 'string' || !b.model) return invalid(ctx, 'model: Field required');
    if (b.max_tokens === undefined) return invalid(ctx, 'max_tokens: Field required');
    if (!Number.isInteger(b.max_tokens) || b.max_tokens < 1) return invalid(ctx, 'max_tokens: Input should be a valid positive integer');
    if (!Array.isArray(b.messages) || b.messages.length === 0) return invalid(ctx, 'messages: Field required');

    const msgs = b.messages.filter(isObject);
    const last = msgs[msgs.length - 1];
    const lastUser = [...msgs].reverse().find((m) => m.role === 'user' && contentText(m.content));
    const tool = Array.isArray(b.tools) && b.tools.find((t) => t && typeof t.name === 'string');
    const plan = planReply(ctx, {
        texts: [contentText(b.system), ...msgs.map((m) => contentText(m.content))],
        lastUserText: lastUser ? contentText(lastUser.content) : '',
        finalUserText: last && last.role === 'user' ? contentText(last.content) : '',
        toolName: tool ? tool.name : null,
    });

    const id = `msg_01${randomId(22)}`;
    const model = b.model;
    const stopReason = plan.tool ? 'tool_use' : 'end_turn';
    const toolId = `toolu_01${randomId(22)}`;
    const usage = (output) => ({
        input_tokens: plan.promptTokens, cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0, output_tokens: output,
    });

    if (!b.stream) {
        const content = plan.tool
            ? [{ type: 'tool_use', id: toolId, name: plan.tool.name, input: plan.tool.args }]
            : [{ type: 'text', text: plan.text }];
        return sendJson(ctx, 200, {
            id, type: 'message', role: 'assistant', model, content,
            stop_reason: stopReason, stop_sequence: null, usage: usage(plan.completionTokens),
        });
    }

    const events = [sseEvent('message_start', {
        type: 'message_start',
        message: { id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: usage(1) },
    })];
    const block = plan.tool
        ? { type: 'tool_use', id: toolId, name: plan.tool.name, input: {} }
        : { type: 'text', text: '' };
    events.push(sseEvent('content_block_start', { type: 'content_block_start', index: 0, content_block: block }));
    events.push(sseEvent('ping', { type: 'ping' }));
    const delta = (d) => sseEvent('content_block_delta', { type: 'content_block_delta', index: 0, delta: d });
    if (plan.tool) {
        for (const p of ['', ...jsonPieces(plan.tool.json)]) events.push(delta({ type: 'input_json_delta', partial_json: p }));
    } else {
        for (const p of textPieces(plan.text)) events.push(delta({ type: 'text_delta', text: p }));
    }
    events.push(sseEvent('content_block_stop', { type: 'content_block_stop', index: 0 }));
    events.push(sseEvent('message_delta', {
        type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: null },
        usage: { output_tokens: plan.completionTokens },
    }));
    events.push(sseEvent('message_stop', { type: 'message_stop' }));
    return sendStream(ctx, events);
}

// ---------------------------------------------------------------- Gemini

function gemini(ctx) {
    if (!requireJson(ctx)) return;
    const b = ctx.body;
    if (!Array.isArray(b.contents) || b.contents.length === 0) {
        return invalid(ctx, '* GenerateContentRequest.contents: contents is not specified');
    }
    const contents = b.contents.filter(isObject);
    const partsText = (c) => (c && Array.isArray(c.parts) ? contentText(c.parts.filter(isObject).map((p) => ({ text: p.text }))) : '');
    const isUser = (c) => !c.role || c.role === 'user';
    const last = contents[contents.length - 1];
    const lastUser = [...contents].reverse().find((c) => isUser(c) && partsText(c));
    let toolName = null;
    for (const t of Array.isArray(b.tools) ? b.tools : []) {
        const decls = t && (t.functionDeclarations || t.function_declarations);
        if (Array.isArray(decls) && decls[0] && decls[0].name) { toolName = decls[0].name; break; }
    }
    const system = b.systemInstruction || b.system_instruction;
    const plan = planReply(ctx, {
        texts: [partsText(system), ...contents.map(partsText)],
        lastUserText: lastUser ? partsText(lastUser) : '',
        finalUserText: last && isUser(last) ? partsText(last) : '',
        toolName,
    });

    const model = ctx.model;
    const responseId = randomId(22);
    const usageMetadata = {
        promptTokenCount: plan.promptTokens,
        candidatesTokenCount: plan.completionTokens,
        totalTokenCount: plan.promptTokens + plan.completionTokens,
    };
    const response = (parts, final) => ({
        candidates: [{ content: { parts, role: 'model' }, ...(final ? { finishReason: 'STOP' } : {}), index: 0 }],
        ...(final ? { usageMetadata } : {}),
        modelVersion: model,
        responseId,
    });

    if (!ctx.streamRequest) {
        const parts = plan.tool ? [{ functionCall: { name: plan.tool.name, args: plan.tool.args } }] : [{ text: plan.text }];
        return sendJson(ctx, 200, response(parts, true));
    }

    let chunks;
    if (plan.tool) {
        chunks = [response([{ functionCall: { name: plan.tool.name, args: plan.tool.args } }], true)];
    } else {
        const pieces = textPieces(plan.text);
        if (pieces.length === 0) pieces.push('');
        chunks = pieces.map((p, i) => response([{ text: p }], i === pieces.length - 1));
    }
    if (ctx.query.get('alt') === 'sse') return sendStream(ctx, chunks.map(sseData));
    // Without alt=sse the API streams one JSON array.
    const parts = chunks.map((c, i) => (i ? ',\r\n' : '[') + JSON.stringify(c));
    parts.push(']');
    return sendStream(ctx, parts, 'application/json; charset=UTF-8');
}

// ---------------------------------------------------------------- echo and bench

function echo(ctx) {
    const { req } = ctx;
    return sendJson(ctx, 200, {
        method: req.method,
        path: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: ctx.raw.toString('utf8'),
    });
}

// Smallest fixed chat.completion, precomputed once.
const BENCH_BODY = Buffer.from(JSON.stringify({
    id: 'chatcmpl-bench', object: 'chat.completion', created: 1700000000, model: 'mock-bench',
    choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
}));
const BENCH_HEADERS = { 'content-type': 'application/json', 'content-length': String(BENCH_BODY.length) };

function bench(req, res) {
    req.resume();
    res.writeHead(200, BENCH_HEADERS);
    res.end(BENCH_BODY);
}

// ---------------------------------------------------------------- routing

// provider: error body shape; auth: subject to MOCK_REQUIRE_KEY.
const ROUTES = {
    '/v1/chat/completions': { methods: ['POST'], provider: 'openai', auth: true, handler: openaiChat },
    '/v1/completions': { methods: ['POST'], provider: 'openai', auth: true, handler: openaiCompletion },
    '/v1/embeddings': { methods: ['POST'], provider: 'openai', auth: true, handler: openaiEmbeddings },
    '/v1/models': { methods: ['GET'], provider: 'openai', auth: true, handler: openaiModels },
    '/v1/messages': { methods: ['POST'], provider: 'anthropic', auth: false, handler: anthropicMessages },
    '/__echo': { methods: null, provider: 'openai', auth: false, handler: echo },
};

const GEMINI_PATH = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/;

function route(method, path) {
    const r = ROUTES[path];
    if (r) return { ...r, allowed: !r.methods || r.methods.includes(method) };
    const m = GEMINI_PATH.exec(path);
    if (m) {
        let model = m[1];
        try { model = decodeURIComponent(model); } catch { /* keep as sent */ }
        return {
            methods: ['POST'], provider: 'gemini', auth: false, handler: gemini, allowed: method === 'POST',
            model, stream: m[2] === 'streamGenerateContent',
        };
    }
    return { provider: path.startsWith('/v1beta/') ? 'gemini' : 'openai', handler: null };
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => resolve(Buffer.concat(chunks)));
        req.on('error', reject);
    });
}

// Model "mock-words...": a bag of words, so that texts sharing words are
// near (each lowercase word adds 1 at the first 4 bytes of its SHA-256, read
// little-endian, modulo dim), then L2-normalised.
function embedWords(text, dim) {
    const v = new Float64Array(dim);
    for (const w of text.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean)) {
        v[crypto.createHash('sha256').update(w).digest().readUInt32LE(0) % dim] += 1;
    }
    const norm = Math.sqrt(v.reduce((a, x) => a + x * x, 0)) || 1;
    return Array.from(v, (x) => Math.fround(x / norm));
}

// A JSON object from a header (UTF-8 read from latin1), or null.
function jsonSwitch(v) {
    if (v === undefined) return null;
    try {
        const o = JSON.parse(Buffer.from(v, 'latin1').toString('utf8'));
        return isObject(o) ? o : null;
    } catch (e) {
        return null;
    }
}

// Per-request behaviour switches from x-mock-* headers and the model name.
function switches(headers, model) {
    const int = (v) => {
        const n = parseInt(v, 10);
        return Number.isFinite(n) && n >= 0 ? n : 0;
    };
    const sw = {
        status: int(headers['x-mock-status']),
        delay: int(headers['x-mock-delay-ms']),
        chunkDelay: int(headers['x-mock-chunk-delay-ms']),
        split: int(headers['x-mock-split']),
        // Each stream event's JSON over this many "data:" lines (2 or more).
        dataLines: int(headers['x-mock-data-lines']),
        // This many line ends before the body, each written on its own
        // after a pause, as a provider keeping a slow answer's connection
        // alive does.
        lead: int(headers['x-mock-lead']),
        // A page of HTML with a 200 instead of the API's answer, as a
        // captive proxy or a wrong base URL gives.
        page: int(headers['x-mock-page']),
        drop: String(headers['x-mock-drop'] || '').toLowerCase(),
        // Header bytes arrive as latin1; re-read them as UTF-8.
        reply: headers['x-mock-reply'] === undefined ? null : Buffer.from(headers['x-mock-reply'], 'latin1').toString('utf8'),
        words: headers['x-mock-words'] === undefined ? null : int(headers['x-mock-words']),
        retryAfter: headers['x-mock-retry-after'] || '',
        // The arguments of a planned tool call, a JSON object (default {"location":"Paris"}).
        toolArgs: jsonSwitch(headers['x-mock-tool-args']),
    };
    let m = /^mock-error-(\d{3})/.exec(model);
    if (m && !sw.status) sw.status = Number(m[1]);
    m = /^mock-slow-(\d+)/.exec(model);
    if (m && !sw.delay) sw.delay = Number(m[1]);
    return sw;
}

async function handle(req, res) {
    const url = req.url;
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (path === '/bench' || path === '/bench/chat/completions') return bench(req, res);

    const raw = await readBody(req);
    const r = route(req.method, path);
    const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
    let body;
    if (r.handler && r.handler !== echo && raw.length) {
        try {
            const parsed = JSON.parse(raw.toString('utf8'));
            if (isObject(parsed)) body = parsed;
        } catch { /* malformed: body stays undefined */ }
    }
    const model = r.model !== undefined ? r.model : (body && typeof body.model === 'string' ? body.model : '');
    const ctx = {
        req, res, raw, body, query, model, provider: r.provider,
        streamRequest: !!r.stream, sw: switches(req.headers, model),
    };

    // Echo what was received, so tests can check what the gateway sent.
    const h = req.headers;
    res.setHeader('x-mock-authorization', h.authorization || '');
    res.setHeader('x-mock-api-key', h['x-api-key'] || h['x-goog-api-key'] || query.get('key') || '');
    res.setHeader('x-mock-path', headerSafe(url));
    res.setHeader('x-mock-body-sha256', crypto.createHash('sha256').update(raw).digest('hex'));
    res.setHeader('x-mock-model', headerSafe(model));
    if (r.provider === 'anthropic') res.setHeader('request-id', `req_01${randomId(22)}`);
    else if (r.provider === 'openai') res.setHeader('x-request-id', `req_${crypto.randomBytes(16).toString('hex')}`);

    if (!r.handler) return sendError(ctx, 404, { message: `Invalid URL (${req.method} ${path})`, code: null });
    if (!r.allowed) return sendError(ctx, 405, { message: `Invalid method for URL (${req.method} ${path})`, code: null });

    if (ctx.sw.delay) await sleep(ctx.sw.delay);
    if (gone(res)) return;
    if (ctx.sw.drop === 'headers') return req.socket.destroy();

    if (r.auth && REQUIRED_KEY && h.authorization !== `Bearer ${REQUIRED_KEY}`) {
        return sendError(ctx, 401, { message: 'Incorrect API key provided. You can find your API key in your account settings.' });
    }
    if (ctx.sw.status >= 400 && ctx.sw.status <= 599) return sendError(ctx, ctx.sw.status);
    if (ctx.sw.page) {
        const page = Buffer.from('<html><body>maintenance</body></html>');
        return transmit(ctx, 200, { 'content-type': 'text/html', 'content-length': String(page.length) },
                        [page], false);
    }
    return r.handler(ctx);
}

// ---------------------------------------------------------------- main

function main() {
    const opts = parseArgs(process.argv.slice(2));
    const server = http.createServer((req, res) => {
        handle(req, res).catch((err) => {
            process.stderr.write(`mock_provider: ${err && err.stack ? err.stack : err}\n`);
            if (!res.headersSent) {
                res.writeHead(500, { 'content-type': 'application/json' });
                res.end(JSON.stringify(errorBody('openai', 500)));
            } else if (res.socket) {
                res.socket.destroy();
            }
        });
    });
    // Outlive the gateway's upstream keepalive so reused connections are not closed under it.
    server.keepAliveTimeout = 65000;
    server.headersTimeout = 66000;

    server.on('error', (err) => {
        process.stderr.write(`mock_provider: ${err.message}\n`);
        process.exit(1);
    });

    const shutdown = () => {
        server.close(() => process.exit(0));
        server.closeAllConnections();
        setTimeout(() => process.exit(0), 500).unref();
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
    if (opts.watchParent) {
        // Exit when the process that started us goes away.
        const parent = process.ppid;
        const alive = () => {
            try { process.kill(parent, 0); return true; } catch (err) { return err.code === 'EPERM'; }
        };
        setInterval(() => { if (!alive()) shutdown(); }, 500).unref();
    }

    server.listen(opts.port, opts.host, () => {
        const addr = server.address();
        process.stdout.write(`mock provider listening on ${opts.host}:${addr.port}\n`);
    });
}

main();
