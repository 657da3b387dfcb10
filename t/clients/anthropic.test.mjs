// The official Anthropic SDK for Node.js against a running Smartflow gateway
// (its native /anthropic endpoint), and the official OpenAI SDK asking for
// Claude models through the OpenAI endpoint, translated by the gateway.
//
//   SMARTFLOW_ANTHROPIC_BASE_URL=http://127.0.0.1:1987/anthropic \
//   SMARTFLOW_OPENAI_BASE_URL=http://127.0.0.1:1987/v1 SMARTFLOW_KEY=sk-... \
//       node --test t/clients/anthropic.test.mjs
//
// The gateway routes claude-* to an Anthropic-shaped provider and gpt-* to
// an OpenAI-shaped provider (both the mock, t/lib/mock_provider.js),
// smartflow-echo to the built-in echo provider and broken-claude to an
// Anthropic provider nobody listens for.  t/clients/002-anthropic-sdk.t
// sets all of this up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import {
    gatewayEnv, openaiClient, anthropicClient, user, weatherTool,
    weatherFunction, expectError, anthropicBody, collectChat, collectMessage,
} from './sdk.mjs';

const {
    SMARTFLOW_ANTHROPIC_BASE_URL: ANTHROPIC_BASE_URL,
    SMARTFLOW_OPENAI_BASE_URL: OPENAI_BASE_URL,
    SMARTFLOW_KEY: KEY,
} = gatewayEnv('SMARTFLOW_ANTHROPIC_BASE_URL', 'SMARTFLOW_OPENAI_BASE_URL', 'SMARTFLOW_KEY');

const anthropic = anthropicClient(ANTHROPIC_BASE_URL, KEY);
const openai = openaiClient(OPENAI_BASE_URL, KEY);

// ------------------------------------------------------------ Anthropic SDK, Anthropic provider

test('messages.create: a Claude model, Anthropic to Anthropic', async () => {
    const { data, response } = await anthropic().messages.create({
        model: 'claude-3-5-sonnet-latest',
        max_tokens: 64,
        system: 'You are terse.',
        messages: user('Hello gateway'),
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-mock-path'), '/v1/messages');
    assert.match(response.headers.get('x-mock-api-key'), /^sk-mock-anthropic-key-/);
    assert.ok(!response.headers.get('x-mock-api-key').includes(KEY));
    assert.equal(data.type, 'message');
    assert.equal(data.role, 'assistant');
    assert.equal(data.model, 'claude-3-5-sonnet-latest');
    assert.match(data.id, /^msg_/);
    assert.deepEqual(data.content, [{ type: 'text', text: 'mock reply to: Hello gateway' }]);
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.stop_sequence, null);
    assert.equal(data.usage.input_tokens, 5);
    assert.equal(data.usage.output_tokens, 5);
});

test('messages.stream: a Claude model, text events and the final message', async () => {
    const stream = anthropic().messages.stream({
        model: 'claude-3-5-sonnet-latest', max_tokens: 64, messages: user('stream me please'),
    });
    const { texts, message } = await collectMessage(stream);

    assert.deepEqual(texts, ['mock', ' reply', ' to:', ' stream', ' me', ' please']);
    assert.equal(message.content[0].text, 'mock reply to: stream me please');
    assert.equal(message.stop_reason, 'end_turn');
    assert.equal(message.usage.input_tokens, 3);
    assert.equal(message.usage.output_tokens, 6);
});

test('tools: a Claude model answers with a tool_use block', async () => {
    const message = await anthropic().messages.create({
        model: 'claude-3-5-sonnet-latest', max_tokens: 64, tools: [weatherTool],
        messages: user('What is the weather in Paris?'),
    });
    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content.length, 1);
    const [block] = message.content;
    assert.equal(block.type, 'tool_use');
    assert.match(block.id, /^toolu_/);
    assert.equal(block.name, 'get_weather');
    assert.deepEqual(block.input, { location: 'Paris' });
});

// ------------------------------------------------------------ Anthropic SDK, OpenAI provider

test('messages.create: a GPT model, translated both ways', async () => {
    const { data, response } = await anthropic().messages.create({
        model: 'gpt-4o-mini',
        max_tokens: 64,
        system: 'You are terse.',
        messages: user('Hello gateway'),
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-mock-path'), '/v1/chat/completions');
    assert.match(response.headers.get('x-mock-authorization'), /^Bearer sk-mock-openai-key-/);
    assert.equal(response.headers.get('x-mock-api-key'), '');
    assert.equal(data.type, 'message');
    assert.equal(data.role, 'assistant');
    assert.equal(data.model, 'gpt-4o-mini');
    assert.match(data.id, /^msg_/);
    assert.deepEqual(data.content, [{ type: 'text', text: 'mock reply to: Hello gateway' }]);
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.stop_sequence, null);
    assert.equal(data.usage.input_tokens, 5);
    assert.equal(data.usage.output_tokens, 5);
});

test('messages.create: a multi-turn conversation to a GPT model', async () => {
    const message = await anthropic().messages.create({
        model: 'gpt-4o-mini',
        max_tokens: 64,
        messages: [
            { role: 'user', content: 'What is 2+2?' },
            { role: 'assistant', content: [{ type: 'text', text: '4' }] },
            { role: 'user', content: [{ type: 'text', text: 'And 3+3?' }] },
        ],
    });
    assert.equal(message.content[0].text, 'mock reply to: And 3+3?');
    assert.equal(message.usage.input_tokens, 6);
});

test('messages.stream: a GPT model, translated event by event', async () => {
    const stream = anthropic().messages.stream({
        model: 'gpt-4o-mini', max_tokens: 64, messages: user('stream me please'),
    });
    const events = [];
    stream.on('streamEvent', (event) => events.push(event.type));
    const { texts, message } = await collectMessage(stream);

    assert.deepEqual(texts, ['mock', ' reply', ' to:', ' stream', ' me', ' please']);
    assert.equal(events[0], 'message_start');
    assert.equal(events.at(-2), 'message_delta');
    assert.equal(events.at(-1), 'message_stop');
    assert.match(message.id, /^msg_/);
    assert.equal(message.model, 'gpt-4o-mini');
    assert.equal(message.content.length, 1);
    assert.equal(message.content[0].type, 'text');
    assert.equal(message.content[0].text, 'mock reply to: stream me please');
    assert.equal(message.stop_reason, 'end_turn');
    // exact usage from the provider, carried by message_delta
    assert.equal(message.usage.input_tokens, 3);
    assert.equal(message.usage.output_tokens, 6);
});

test('messages.stream: a GPT model in 5-byte pieces', async () => {
    const stream = anthropic().messages.stream(
        { model: 'gpt-4o-mini', max_tokens: 64, messages: user('split across packets, caf\u00e9 \u{1f600}') },
        { headers: { 'x-mock-split': '5' } },
    );
    const { texts, message } = await collectMessage(stream);
    assert.equal(texts.join(''), 'mock reply to: split across packets, caf\u00e9 \u{1f600}');
    assert.equal(message.content[0].text, 'mock reply to: split across packets, caf\u00e9 \u{1f600}');
    assert.equal(message.usage.output_tokens, 8);
});

test('tools: a GPT model answers with a tool_use block, input parsed', async () => {
    const message = await anthropic().messages.create({
        model: 'gpt-4o-mini', max_tokens: 64, tools: [weatherTool],
        tool_choice: { type: 'auto' },
        messages: user('What is the weather in Paris?'),
    });
    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content.length, 1);
    const [block] = message.content;
    assert.equal(block.type, 'tool_use');
    assert.match(block.id, /^call_/);
    assert.equal(block.name, 'get_weather');
    assert.deepEqual(block.input, { location: 'Paris' });
    assert.equal(message.usage.output_tokens, 3);
});

test('tools: a streamed tool call from a GPT model', async () => {
    const stream = anthropic().messages.stream({
        model: 'gpt-4o-mini', max_tokens: 64, tools: [weatherTool],
        messages: user('What is the weather in Paris?'),
    });
    const pieces = [];
    stream.on('inputJson', (partial) => pieces.push(partial));
    const message = await stream.finalMessage();

    assert.equal(pieces.join(''), '{"location":"Paris"}');
    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content[0].type, 'tool_use');
    assert.equal(message.content[0].name, 'get_weather');
    assert.deepEqual(message.content[0].input, { location: 'Paris' });
});

test('tools: the tool result goes back to a GPT model', async () => {
    const c = anthropic();
    const question = user('What is the weather in Paris?');
    const first = await c.messages.create({
        model: 'gpt-4o-mini', max_tokens: 64, tools: [weatherTool], messages: question,
    });
    const call = first.content.find((b) => b.type === 'tool_use');
    assert.ok(call, 'a tool_use block');

    const { data, response } = await c.messages.create({
        model: 'gpt-4o-mini',
        max_tokens: 64,
        tools: [weatherTool],
        messages: [
            ...question,
            { role: 'assistant', content: first.content },
            { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: '18 degrees, sunny' }] },
        ],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.content[0].text, 'mock reply to: What is the weather in Paris?');
});

test('the echo provider through the Anthropic SDK, plain and streamed', async () => {
    const c = anthropic();
    const message = await c.messages.create({
        model: 'smartflow-echo', max_tokens: 64,
        messages: [{ role: 'user', content: [{ type: 'text', text: 'Hello,' }, { type: 'text', text: 'echo!' }] }],
    });
    assert.equal(message.content[0].text, 'Echo: Hello, echo!');
    assert.equal(message.model, 'smartflow-echo');
    assert.equal(message.stop_reason, 'end_turn');

    const { texts, message: streamed } = await collectMessage(c.messages.stream({
        model: 'smartflow-echo', max_tokens: 64, messages: user('one two three'),
    }));
    assert.equal(texts.join(''), 'Echo: one two three');
    assert.equal(streamed.usage.output_tokens, 4);
    assert.equal(streamed.usage.input_tokens, 3);
});

test('a key sent as a Bearer token (authToken) is accepted', async () => {
    const message = await new Anthropic({
        baseURL: ANTHROPIC_BASE_URL, apiKey: null, authToken: KEY, maxRetries: 0,
    }).messages.create({ model: 'smartflow-echo', max_tokens: 16, messages: user('bearer') });
    assert.equal(message.content[0].text, 'Echo: bearer');
});

// ------------------------------------------------------------ models

test('models.list lists the exact routes in Anthropic\'s format', async () => {
    const models = [];
    for await (const m of anthropic().models.list()) models.push(m);
    const ids = models.map((m) => m.id);

    for (const id of ['claude-3-5-sonnet-latest', 'gpt-4o-mini', 'smartflow-echo', 'broken-claude']) {
        assert.ok(ids.includes(id), `${id} listed in ${ids}`);
    }
    for (const m of models) {
        assert.equal(m.type, 'model');
        assert.equal(m.display_name, m.id);
        assert.match(m.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
        assert.ok(!m.id.includes('*'), `wildcard ${m.id} listed`);
    }
});

test('models.list with a wrong key is an AuthenticationError', async () => {
    const err = await expectError(anthropic({ apiKey: 'sk-wrong-key-0000000000' }).models.list(),
        Anthropic.AuthenticationError, { status: 401 });
    assert.equal(anthropicBody(err).type, 'authentication_error');
});

// ------------------------------------------------------------ Anthropic SDK errors

test('a wrong key is an AuthenticationError that does not echo the key', async () => {
    const wrong = 'sk-ant-not-the-right-key-987654321';
    const err = await expectError(
        anthropic({ apiKey: wrong }).messages.create({ model: 'gpt-4o-mini', max_tokens: 8, messages: user('hi') }),
        Anthropic.AuthenticationError, { status: 401 });
    const body = anthropicBody(err);
    assert.equal(body.type, 'authentication_error');
    assert.ok(!body.message.includes(wrong), body.message);
});

test('an unknown model is a NotFoundError', async () => {
    const err = await expectError(
        anthropic().messages.create({ model: 'no-such-model', max_tokens: 8, messages: user('hi') }),
        Anthropic.NotFoundError, { status: 404 });
    const body = anthropicBody(err);
    assert.equal(body.type, 'not_found_error');
    assert.match(body.message, /no-such-model/);

    await expectError(
        anthropic().messages.create({ model: 'no-such-model', max_tokens: 8, messages: user('hi'), stream: true }),
        Anthropic.NotFoundError, { status: 404 });
});

test('a missing max_tokens is a BadRequestError', async () => {
    for (const model of ['claude-3-5-sonnet-latest', 'gpt-4o-mini']) {
        const err = await expectError(
            anthropic().messages.create({ model, messages: user('hi') }),
            Anthropic.BadRequestError, { status: 400 });
        assert.deepEqual(anthropicBody(err),
            { type: 'invalid_request_error', message: 'max_tokens: Field required' });
    }
});

test('malformed JSON is a BadRequestError', async () => {
    const err = await expectError(
        anthropic().post('/v1/messages', {
            body: '{"model": "gpt-4o-mini", "max_tokens": 8, "messages": [',
            headers: { 'content-type': 'application/json' },
        }),
        Anthropic.BadRequestError, { status: 400 });
    assert.equal(anthropicBody(err).type, 'invalid_request_error');
});

test('a provider\'s 429 is a RateLimitError, translated, with its Retry-After', async () => {
    for (const model of ['gpt-4o-mini', 'claude-3-5-sonnet-latest']) {
        const err = await expectError(
            anthropic().messages.create({ model, max_tokens: 8, messages: user('hi') },
                { headers: { 'x-mock-status': '429' } }),
            Anthropic.RateLimitError, { status: 429 });
        assert.equal(anthropicBody(err).type, 'rate_limit_error');
        assert.equal(err.headers.get('retry-after'), '1');
    }
});

test('a provider\'s 5xx is an InternalServerError, translated', async () => {
    const c = anthropic();
    const req = { model: 'gpt-4o-mini', max_tokens: 8, messages: user('hi') };

    let err = await expectError(c.messages.create(req, { headers: { 'x-mock-status': '500' } }),
        Anthropic.InternalServerError, { status: 500 });
    assert.equal(anthropicBody(err).type, 'api_error');

    err = await expectError(c.messages.create(req, { headers: { 'x-mock-status': '503' } }),
        Anthropic.InternalServerError, { status: 503 });
    assert.equal(anthropicBody(err).type, 'overloaded_error');

    err = await expectError(
        c.messages.create({ ...req, model: 'claude-3-5-sonnet-latest' }, { headers: { 'x-mock-status': '529' } }),
        Anthropic.InternalServerError, { status: 529 });
    assert.equal(anthropicBody(err).type, 'overloaded_error');
});

test('an unreachable provider is a 502 InternalServerError', async () => {
    const err = await expectError(
        anthropic().messages.create({ model: 'broken-claude', max_tokens: 8, messages: user('anyone?') }),
        Anthropic.InternalServerError, { status: 502 });
    assert.ok(err instanceof Anthropic.APIError);
    const body = anthropicBody(err);
    assert.equal(body.type, 'api_error');
    assert.match(body.message, /could not be reached/);
});

test('a stream that breaks fails the SDK stream with an api_error', async () => {
    for (const model of ['gpt-4o-mini', 'claude-3-5-sonnet-latest']) {
        const stream = anthropic().messages.stream(
            { model, max_tokens: 64, messages: user('this stream will be cut short') },
            { headers: { 'x-mock-drop': 'mid-stream', 'x-mock-chunk-delay-ms': '5' } },
        );
        const texts = [];
        stream.on('text', (t) => texts.push(t));
        const err = await expectError(stream.finalMessage(), Anthropic.APIError);
        assert.equal(err.error?.error?.type, 'api_error', `${model}: ${err.message}`);
        assert.match(err.error.error.message, /stream ended before completion/);
        assert.ok('mock reply to: this stream will be cut short'.startsWith(texts.join('')), texts.join(''));
    }
});

// ------------------------------------------------------------ OpenAI SDK, Anthropic provider

test('OpenAI SDK: chat completion from a Claude model', async () => {
    const { data, response } = await openai().chat.completions.create({
        model: 'claude-3-5-sonnet-latest',
        messages: [
            { role: 'system', content: 'You are terse.' },
            { role: 'user', content: 'Hello gateway' },
        ],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-mock-path'), '/v1/messages');
    assert.match(response.headers.get('x-mock-api-key'), /^sk-mock-anthropic-key-/);
    assert.equal(response.headers.get('x-mock-authorization'), '');
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.model, 'claude-3-5-sonnet-latest');
    assert.match(data.id, /^chatcmpl-/);
    assert.equal(data.choices.length, 1);
    assert.equal(data.choices[0].message.role, 'assistant');
    assert.equal(data.choices[0].message.content, 'mock reply to: Hello gateway');
    assert.equal(data.choices[0].finish_reason, 'stop');
    assert.deepEqual(data.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
});

test('OpenAI SDK: a streamed chat completion from a Claude model', async () => {
    const { data: stream, response } = await openai().chat.completions.create({
        model: 'claude-3-5-sonnet-latest', messages: user('stream me please'), stream: true,
    }).withResponse();

    assert.match(response.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(response.headers.get('x-accel-buffering'), 'no');

    const { chunks, text } = await collectChat(stream);
    assert.equal(text, 'mock reply to: stream me please');
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.model, 'claude-3-5-sonnet-latest');
        assert.equal(c.id, chunks[0].id);
        assert.ok(!c.usage, 'no usage without stream_options');
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
});

test('OpenAI SDK: include_usage ends a Claude stream with the exact usage', async () => {
    const stream = await openai().chat.completions.create({
        model: 'claude-3-5-sonnet-latest', messages: user('count my tokens'), stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectChat(stream);

    assert.equal(text, 'mock reply to: count my tokens');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 });
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage ?? null, null);
});

test('OpenAI SDK: a Claude model\'s tool call, arguments as JSON', async () => {
    const reply = await openai().chat.completions.create({
        model: 'claude-3-5-sonnet-latest', tools: [weatherFunction], tool_choice: 'auto',
        messages: user('What is the weather in Paris?'),
    });
    const { message, finish_reason: finish } = reply.choices[0];
    assert.equal(finish, 'tool_calls');
    assert.equal(message.content, null);
    assert.equal(message.tool_calls.length, 1);
    const [call] = message.tool_calls;
    assert.equal(call.type, 'function');
    assert.match(call.id, /^toolu_/);
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { location: 'Paris' });
});

test('OpenAI SDK: a Claude model\'s streamed tool call, through the stream helper', async () => {
    const final = await openai().chat.completions.stream({
        model: 'claude-3-5-sonnet-latest', tools: [weatherFunction],
        messages: user('What is the weather in Paris?'),
    }).finalChatCompletion();

    const { message, finish_reason: finish } = final.choices[0];
    assert.equal(finish, 'tool_calls');
    assert.equal(message.tool_calls.length, 1);
    assert.equal(message.tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(message.tool_calls[0].function.arguments), { location: 'Paris' });
});

test('OpenAI SDK: the tool result goes back to a Claude model', async () => {
    const c = openai();
    const question = user('What is the weather in Paris?');
    const first = await c.chat.completions.create({
        model: 'claude-3-5-sonnet-latest', tools: [weatherFunction], messages: question,
    });
    const { message } = first.choices[0];

    const reply = await c.chat.completions.create({
        model: 'claude-3-5-sonnet-latest',
        tools: [weatherFunction],
        messages: [
            ...question,
            message,
            { role: 'tool', tool_call_id: message.tool_calls[0].id, content: '18 degrees, sunny' },
        ],
    });
    assert.equal(reply.choices[0].finish_reason, 'stop');
    assert.equal(reply.choices[0].message.content, 'mock reply to: What is the weather in Paris?');
});

test('OpenAI SDK: a Claude provider\'s errors as the SDK error classes', async () => {
    const c = openai();
    const req = { model: 'claude-3-5-sonnet-latest', messages: user('hi') };

    const limited = await expectError(
        c.chat.completions.create(req, { headers: { 'x-mock-status': '429' } }),
        OpenAI.RateLimitError, { status: 429, code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    assert.equal(limited.headers.get('retry-after'), '1');

    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '529' } }),
        OpenAI.InternalServerError, { status: 529, code: 'overloaded', type: 'api_error' });
    await expectError(
        c.chat.completions.create({ ...req, stream: true }, { headers: { 'x-mock-status': '500' } }),
        OpenAI.InternalServerError, { status: 500, type: 'api_error' });
});

test('OpenAI SDK: a Claude stream that breaks fails the iteration', async () => {
    const stream = await openai().chat.completions.create(
        { model: 'claude-3-5-sonnet-latest', messages: user('this stream will be cut short'), stream: true },
        { headers: { 'x-mock-drop': 'mid-stream', 'x-mock-chunk-delay-ms': '5' } },
    );
    let text = '';
    const err = await expectError((async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    })(), OpenAI.APIError);
    assert.match(err.message, /stream ended before completion/);
    assert.ok('mock reply to: this stream will be cut short'.startsWith(text), text);
});

test('OpenAI SDK: completions and embeddings of a Claude model are refused', async () => {
    await expectError(openai().completions.create({ model: 'claude-3-5-sonnet-latest', prompt: 'hi' }),
        OpenAI.BadRequestError, { status: 400, code: 'unsupported_model', param: 'model' });
    await expectError(openai().embeddings.create({ model: 'claude-3-5-sonnet-latest', input: 'hi' }),
        OpenAI.BadRequestError, { status: 400, code: 'unsupported_model', param: 'model' });
});
