// The official OpenAI SDK for Node.js against a running Smartflow gateway.
//
//   SMARTFLOW_BASE_URL=http://127.0.0.1:1986/v1 SMARTFLOW_KEY=sk-... \
//       node --test t/clients/openai.test.mjs
//
// The gateway routes gpt-* and text-embedding-* to the mock provider
// (t/lib/mock_provider.js), smartflow-echo to the built-in echo provider and
// broken-* to a provider nobody listens for.  SMARTFLOW_RESTRICTED_BASE_URL,
// when set, is the same API behind "smartflow_policy_models gpt-*
// text-embedding-*".  t/clients/001-sdk.t sets all of this up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
    gatewayEnv, openaiClient, user, expectError, collectChat, collectCompletion,
} from './sdk.mjs';

const { SMARTFLOW_BASE_URL: BASE_URL, SMARTFLOW_KEY: KEY } =
    gatewayEnv('SMARTFLOW_BASE_URL', 'SMARTFLOW_KEY');
const RESTRICTED_BASE_URL = process.env.SMARTFLOW_RESTRICTED_BASE_URL;

// A client that fails fast: no retries, so an error status shows at once.
const client = openaiClient(BASE_URL, KEY);

const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

// ------------------------------------------------------------ chat, mock provider

test('chat completion through the mock provider', async () => {
    const { data, response } = await client().chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [
            { role: 'system', content: 'You are terse.' },
            { role: 'user', content: 'Hello gateway' },
        ],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.model, 'gpt-4o-mini');
    assert.match(data.id, /^chatcmpl-/);
    assert.equal(data.choices.length, 1);
    assert.equal(data.choices[0].message.role, 'assistant');
    assert.equal(data.choices[0].message.content, 'mock reply to: Hello gateway');
    assert.equal(data.choices[0].finish_reason, 'stop');
    assert.ok(data.usage.prompt_tokens > 0);
    assert.equal(data.usage.completion_tokens, 5);
    assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
});

test('the provider sees the provider key, never the client key', async () => {
    const { response } = await client().chat.completions.create({
        model: 'gpt-4o-mini', messages: user('whose key?'),
    }).withResponse();

    const seen = response.headers.get('x-mock-authorization');
    assert.match(seen, /^Bearer sk-mock-provider-key-/);
    assert.ok(!seen.includes(KEY));
    assert.equal(response.headers.get('x-mock-path'), '/v1/chat/completions');
    assert.equal(response.headers.get('x-mock-model'), 'gpt-4o-mini');
});

test('a model matched by a wildcard route', async () => {
    const reply = await client().chat.completions.create({
        model: 'gpt-4.1-nano', messages: user('wildcard'),
    });
    assert.equal(reply.model, 'gpt-4.1-nano');
    assert.equal(reply.choices[0].message.content, 'mock reply to: wildcard');
});

test('request headers and the request id pass through', async () => {
    const { data, response } = await client().chat.completions.create(
        { model: 'gpt-4o-mini', messages: user('ignored') },
        { headers: { 'x-mock-reply': 'Bonjour, monde' } },
    ).withResponse();

    assert.equal(data.choices[0].message.content, 'Bonjour, monde');
    assert.match(response.headers.get('x-request-id') ?? '', /^req_/);
});

test('streamed chat completion through the mock provider', async () => {
    const { data: stream, response } = await client().chat.completions.create({
        model: 'gpt-4o-mini', messages: user('stream me please'), stream: true,
    }).withResponse();

    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(response.headers.get('x-accel-buffering'), 'no');

    const { chunks, text } = await collectChat(stream);
    assert.equal(text, 'mock reply to: stream me please');
    assert.ok(chunks.length > 3, `${chunks.length} chunks`);
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.model, 'gpt-4o-mini');
        assert.equal(c.id, chunks[0].id);
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    assert.ok(chunks.every((c) => !c.usage), 'no usage without stream_options');
});

test('streamed chat completion with include_usage ends with a usage chunk', async () => {
    const stream = await client().chat.completions.create({
        model: 'gpt-4o-mini', messages: user('count my tokens'), stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectChat(stream);

    assert.equal(text, 'mock reply to: count my tokens');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage, 'usage on the last chunk');
    assert.equal(last.usage.completion_tokens, 6);
    assert.ok(last.usage.prompt_tokens > 0);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage ?? null, null);
});

test('streamed chat completion arriving in small pieces', async () => {
    // the provider cuts its bytes every 7 bytes, across SSE events
    const stream = await client().chat.completions.create(
        { model: 'gpt-4o-mini', messages: user('split across packets'), stream: true },
        { headers: { 'x-mock-split': '7' } },
    );
    const { text } = await collectChat(stream);
    assert.equal(text, 'mock reply to: split across packets');
});

test('the SDK stream helper assembles the final completion', async () => {
    const runner = client().chat.completions.stream({
        model: 'gpt-4o-mini', messages: user('helper'),
    });
    const deltas = [];
    runner.on('content', (delta) => deltas.push(delta));
    const final = await runner.finalChatCompletion();

    assert.equal(final.choices[0].message.content, 'mock reply to: helper');
    assert.equal(deltas.join(''), 'mock reply to: helper');
});

// ------------------------------------------------------------ the echo provider

test('echo provider: chat completion', async () => {
    const reply = await client().chat.completions.create({
        model: 'smartflow-echo',
        messages: [
            { role: 'user', content: 'first question' },
            { role: 'assistant', content: 'first answer' },
            { role: 'user', content: 'Hello, echo!' },
        ],
    });
    assert.equal(reply.object, 'chat.completion');
    assert.equal(reply.model, 'smartflow-echo');
    assert.match(reply.id, /^chatcmpl-/);
    assert.equal(reply.choices[0].message.role, 'assistant');
    assert.equal(reply.choices[0].message.content, 'Echo: Hello, echo!');
    assert.equal(reply.choices[0].finish_reason, 'stop');
    assert.equal(reply.usage.completion_tokens, 3);
    assert.equal(reply.usage.total_tokens, reply.usage.prompt_tokens + reply.usage.completion_tokens);
});

test('echo provider: content parts and escaped text', async () => {
    const reply = await client().chat.completions.create({
        model: 'smartflow-echo',
        messages: [{
            role: 'user',
            content: [
                { type: 'text', text: 'say "hi"' },
                { type: 'text', text: 'and \\ then\nstop, grüß dich ✓' },
            ],
        }],
    });
    assert.equal(reply.choices[0].message.content, 'Echo: say "hi" and \\ then\nstop, grüß dich ✓');
});

test('echo provider: streamed chat completion', async () => {
    const { data: stream, response } = await client().chat.completions.create({
        model: 'smartflow-echo', messages: user('one two three "four"'), stream: true,
    }).withResponse();
    assert.match(response.headers.get('content-type'), /^text\/event-stream/);

    const { chunks, text } = await collectChat(stream);
    assert.equal(text, 'Echo: one two three "four"');
    assert.ok(chunks.length >= 6, `${chunks.length} chunks`);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.model, 'smartflow-echo');
        assert.equal(c.id, chunks[0].id);
        assert.ok(!c.usage);
    }
});

test('echo provider: streamed chat completion with include_usage', async () => {
    const stream = await client().chat.completions.create({
        model: 'smartflow-echo', messages: user('usage please'), stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectChat(stream);

    assert.equal(text, 'Echo: usage please');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.completion_tokens, 3);
    assert.ok(last.usage.prompt_tokens > 0);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
});

test('echo provider: the SDK stream helper', async () => {
    const final = await client().chat.completions.stream({
        model: 'smartflow-echo', messages: user('helper echo'),
    }).finalContent();
    assert.equal(final, 'Echo: helper echo');
});

// ------------------------------------------------------------ models

test('models.list lists the exact routes', async () => {
    const ids = new Map();
    for await (const m of client().models.list()) {
        assert.equal(m.object, 'model');
        assert.equal(typeof m.created, 'number');
        ids.set(m.id, m.owned_by);
    }
    assert.equal(ids.get('smartflow-echo'), 'demo');
    assert.equal(ids.get('gpt-4o-mini'), 'mock');
    assert.equal(ids.get('text-embedding-3-small'), 'mock');
    assert.equal(ids.get('broken-model'), 'down');
    for (const id of ids.keys()) assert.ok(!id.includes('*'), `wildcard ${id} listed`);
});

test('models.list with a wrong key is an AuthenticationError', async () => {
    await expectError(client({ apiKey: 'sk-wrong-key-0000000000' }).models.list(),
        OpenAI.AuthenticationError, { status: 401, code: 'invalid_api_key' });
});

// ------------------------------------------------------------ embeddings

test('embeddings through the mock provider (SDK default base64 encoding)', async () => {
    const { data, response } = await client().embeddings.create({
        model: 'text-embedding-3-small', input: ['first text', 'second text'],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(data.object, 'list');
    assert.equal(data.model, 'text-embedding-3-small');
    assert.equal(data.data.length, 2);
    for (const [i, item] of data.data.entries()) {
        assert.equal(item.object, 'embedding');
        assert.equal(item.index, i);
        assert.equal(item.embedding.length, 16);
        assert.ok(item.embedding.every(Number.isFinite));
        assert.ok(Math.abs(norm(item.embedding) - 1) < 1e-3);
    }
    assert.notDeepEqual(data.data[0].embedding, data.data[1].embedding);
    assert.ok(data.usage.prompt_tokens > 0);
});

test('embeddings through the mock provider as floats', async () => {
    const reply = await client().embeddings.create({
        model: 'text-embedding-3-small', input: 'float please', encoding_format: 'float', dimensions: 8,
    });
    assert.equal(reply.data.length, 1);
    assert.equal(reply.data[0].embedding.length, 8);
    assert.ok(Math.abs(norm(reply.data[0].embedding) - 1) < 1e-3);
});

test('echo provider: embeddings as floats', async () => {
    const reply = await client().embeddings.create({
        model: 'smartflow-echo', input: ['alpha beta', 'gamma'], encoding_format: 'float',
    });
    assert.equal(reply.object, 'list');
    assert.equal(reply.model, 'smartflow-echo');
    assert.equal(reply.data.length, 2);
    for (const [i, item] of reply.data.entries()) {
        assert.equal(item.index, i);
        assert.equal(item.embedding.length, 16);
        assert.ok(Math.abs(norm(item.embedding) - 1) < 1e-3);
    }
    const again = await client().embeddings.create({
        model: 'smartflow-echo', input: 'alpha beta', encoding_format: 'float',
    });
    assert.deepEqual(again.data[0].embedding, reply.data[0].embedding, 'deterministic');
});

test('echo provider: embeddings with the SDK default base64 encoding', async () => {
    // the SDK asks for encoding_format "base64" unless told otherwise and
    // decodes the strings it gets back into float32 vectors
    const reply = await client().embeddings.create({
        model: 'smartflow-echo', input: 'alpha beta',
    });
    const floats = await client().embeddings.create({
        model: 'smartflow-echo', input: 'alpha beta', encoding_format: 'float',
    });
    assert.equal(reply.data[0].embedding.length, 16);
    for (const [i, x] of reply.data[0].embedding.entries()) {
        assert.ok(Math.abs(x - floats.data[0].embedding[i]) < 1e-5, `component ${i}: ${x}`);
    }
});

test('echo provider: one token array is one input', async () => {
    // input: number[] is a single tokenised text, number[][] several
    const one = await client().embeddings.create({
        model: 'smartflow-echo', input: [1234, 5678, 91011], encoding_format: 'float',
    });
    assert.equal(one.data.length, 1);
    assert.equal(one.data[0].embedding.length, 16);

    const two = await client().embeddings.create({
        model: 'smartflow-echo', input: [[1234, 5678], [91011]], encoding_format: 'float',
    });
    assert.equal(two.data.length, 2);
    assert.deepEqual(two.data.map((d) => d.index), [0, 1]);
});

// ------------------------------------------------------------ legacy completions

test('legacy completion through the mock provider', async () => {
    const reply = await client().completions.create({
        model: 'gpt-3.5-turbo-instruct', prompt: 'Say this is a test',
    });
    assert.equal(reply.object, 'text_completion');
    assert.equal(reply.model, 'gpt-3.5-turbo-instruct');
    assert.equal(reply.choices[0].text, 'mock reply to: Say this is a test');
    assert.equal(reply.choices[0].finish_reason, 'stop');
});

test('legacy streamed completion through the mock provider', async () => {
    const stream = await client().completions.create({
        model: 'gpt-3.5-turbo-instruct', prompt: 'stream the legacy way', stream: true,
    });
    const { chunks, text } = await collectCompletion(stream);
    assert.equal(text, 'mock reply to: stream the legacy way');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
});

test('echo provider: legacy completion, plain and streamed', async () => {
    const reply = await client().completions.create({
        model: 'smartflow-echo', prompt: 'legacy echo',
    });
    assert.equal(reply.object, 'text_completion');
    assert.match(reply.id, /^cmpl-/);
    assert.equal(reply.choices[0].text, 'Echo: legacy echo');

    const stream = await client().completions.create({
        model: 'smartflow-echo', prompt: 'legacy echo streamed', stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectCompletion(stream);
    assert.equal(text, 'Echo: legacy echo streamed');
    assert.equal(chunks.at(-1).usage.completion_tokens, 4);
});

// ------------------------------------------------------------ errors

test('missing messages is a BadRequestError', async () => {
    const err = await expectError(
        client().chat.completions.create({ model: 'gpt-4o-mini' }),
        OpenAI.BadRequestError,
        { status: 400, code: 'missing_required_parameter', param: 'messages', type: 'invalid_request_error' });
    assert.match(err.message, /^400 .*messages/);
});

test('missing model, prompt and input are BadRequestErrors', async () => {
    await expectError(client().chat.completions.create({ messages: user('no model') }),
        OpenAI.BadRequestError, { status: 400, code: 'missing_required_parameter', param: 'model' });
    await expectError(client().completions.create({ model: 'gpt-3.5-turbo-instruct' }),
        OpenAI.BadRequestError, { status: 400, code: 'missing_required_parameter', param: 'prompt' });
    await expectError(client().embeddings.create({ model: 'text-embedding-3-small' }),
        OpenAI.BadRequestError, { status: 400, code: 'missing_required_parameter', param: 'input' });
});

test('malformed JSON is a BadRequestError', async () => {
    await expectError(
        client().post('/chat/completions', {
            body: '{"model": "gpt-4o-mini", "messages": [',
            headers: { 'content-type': 'application/json' },
        }),
        OpenAI.BadRequestError, { status: 400, code: 'invalid_json', type: 'invalid_request_error' });
    await expectError(
        client().post('/chat/completions', {
            body: '["not", "an", "object"]',
            headers: { 'content-type': 'application/json' },
        }),
        OpenAI.BadRequestError, { status: 400, code: 'invalid_json' });
});

test('a wrong key is an AuthenticationError that does not echo the key', async () => {
    const wrong = 'sk-not-the-right-key-987654321';
    const err = await expectError(
        client({ apiKey: wrong }).chat.completions.create({ model: 'gpt-4o-mini', messages: user('hi') }),
        OpenAI.AuthenticationError, { status: 401, code: 'invalid_api_key' });
    assert.ok(!err.message.includes(wrong), err.message);
    assert.match(err.message, /sk-not\*\*\*\*/);
});

test('a key in x-api-key instead of Authorization is accepted', async () => {
    // the SDK always sets Authorization from apiKey: this client's key is
    // wrong, its Authorization header is removed per request and the right
    // key goes in x-api-key
    const reply = await client({ apiKey: 'sk-wrong-key-0000000000' }).chat.completions.create(
        { model: 'smartflow-echo', messages: user('other header') },
        { headers: { authorization: null, 'x-api-key': KEY } },
    );
    assert.equal(reply.choices[0].message.content, 'Echo: other header');
});

test('an unknown model is a NotFoundError with code model_not_found', async () => {
    const err = await expectError(
        client().chat.completions.create({ model: 'no-such-model', messages: user('hi') }),
        OpenAI.NotFoundError, { status: 404, code: 'model_not_found', param: 'model' });
    assert.match(err.message, /no-such-model/);

    await expectError(
        client().chat.completions.create({ model: 'no-such-model', messages: user('hi'), stream: true }),
        OpenAI.NotFoundError, { status: 404, code: 'model_not_found' });
});

test('an unknown endpoint is a NotFoundError', async () => {
    await expectError(client().get('/no/such/endpoint'), OpenAI.NotFoundError, { status: 404 });
});

test('GET on chat completions is a 405 APIError', async () => {
    await expectError(client().get('/chat/completions'), OpenAI.APIError,
        { status: 405, code: 'method_not_allowed' });
});

test('a model outside the endpoint policy is a PermissionDeniedError', { skip: !RESTRICTED_BASE_URL && 'SMARTFLOW_RESTRICTED_BASE_URL not set' }, async () => {
    const restricted = client({ baseURL: RESTRICTED_BASE_URL });
    const err = await expectError(
        restricted.chat.completions.create({ model: 'smartflow-echo', messages: user('hi') }),
        OpenAI.PermissionDeniedError, { status: 403, code: 'model_not_allowed', param: 'model' });
    assert.match(err.message, /smartflow-echo/);

    const ok = await restricted.chat.completions.create({ model: 'gpt-4o-mini', messages: user('allowed') });
    assert.equal(ok.choices[0].message.content, 'mock reply to: allowed');
});

test('an unreachable provider is a 502 InternalServerError', async () => {
    const err = await expectError(
        client().chat.completions.create({ model: 'broken-model', messages: user('anyone?') }),
        OpenAI.InternalServerError, { status: 502, code: 'upstream_unreachable' });
    assert.ok(err instanceof OpenAI.APIError);

    await expectError(
        client().chat.completions.create({ model: 'broken-wildcard', messages: user('anyone?'), stream: true }),
        OpenAI.InternalServerError, { status: 502, code: 'upstream_unreachable' });
    await expectError(
        client().embeddings.create({ model: 'broken-model', input: 'anyone?' }),
        OpenAI.InternalServerError, { status: 502, code: 'upstream_unreachable' });
});

test('provider errors pass through as the SDK error classes', async () => {
    const c = client();
    const req = { model: 'gpt-4o-mini', messages: user('hi') };

    const limited = await expectError(
        c.chat.completions.create(req, { headers: { 'x-mock-status': '429' } }),
        OpenAI.RateLimitError, { status: 429, code: 'rate_limit_exceeded', type: 'requests' });
    assert.equal(limited.headers.get('retry-after'), '1');

    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '401' } }),
        OpenAI.AuthenticationError, { status: 401, code: 'invalid_api_key' });
    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '404' } }),
        OpenAI.NotFoundError, { status: 404, code: 'model_not_found' });
    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '503' } }),
        OpenAI.InternalServerError, { status: 503, type: 'server_error' });
    await expectError(
        c.chat.completions.create({ ...req, stream: true }, { headers: { 'x-mock-status': '500' } }),
        OpenAI.InternalServerError, { status: 500, type: 'server_error' });
});

test('a provider dropping the connection mid-stream fails the iteration', async () => {
    const stream = await client().chat.completions.create(
        { model: 'gpt-4o-mini', messages: user('this stream will be cut short'), stream: true },
        { headers: { 'x-mock-drop': 'mid-stream', 'x-mock-chunk-delay-ms': '5' } },
    );
    let text = '';
    await assert.rejects(async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    });
    assert.ok('mock reply to: this stream will be cut short'.startsWith(text), text);
});

test('a provider dropping the connection before answering is a 502', async () => {
    await expectError(
        client().chat.completions.create({ model: 'gpt-4o-mini', messages: user('hi') },
            { headers: { 'x-mock-drop': 'headers' } }),
        OpenAI.InternalServerError, { status: 502, code: 'upstream_unreachable' });
});
