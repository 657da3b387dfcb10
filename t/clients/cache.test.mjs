// The MetaCache through the official SDKs against a running gateway whose
// gpt-* and claude-* models go to the mock provider, which answers with
// its x-mock-reply header: an answer from the cache shows the first
// reply where the provider would have given another.  The cache's
// verdict is read from the response headers the SDKs expose.
//
//   SMARTFLOW_OPENAI_BASE_URL=http://127.0.0.1:1990/v1 \
//   SMARTFLOW_ANTHROPIC_BASE_URL=http://127.0.0.1:1990/anthropic \
//   SMARTFLOW_KEY=sk-... node --test t/clients/cache.test.mjs
//
// t/clients/006-cache-sdk.t sets all of this up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

const OPENAI_BASE_URL = process.env.SMARTFLOW_OPENAI_BASE_URL;
const ANTHROPIC_BASE_URL = process.env.SMARTFLOW_ANTHROPIC_BASE_URL;
const KEY = process.env.SMARTFLOW_KEY;

if (!OPENAI_BASE_URL || !ANTHROPIC_BASE_URL || !KEY) {
    throw new Error('SMARTFLOW_OPENAI_BASE_URL, SMARTFLOW_ANTHROPIC_BASE_URL '
        + 'and SMARTFLOW_KEY must name a running gateway');
}

const openai = new OpenAI({ baseURL: OPENAI_BASE_URL, apiKey: KEY, maxRetries: 0, timeout: 20000 });
const anthropic = new Anthropic({ baseURL: ANTHROPIC_BASE_URL, apiKey: KEY, maxRetries: 0, timeout: 20000 });

const user = (content) => [{ role: 'user', content }];
const reply = (text) => ({ headers: { 'x-mock-reply': text } });

test('openai: a plain answer, then the same question from the cache', async () => {
    const first = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages: user('What is a B-tree?') }, reply('first'))
        .withResponse();
    assert.equal(first.response.headers.get('x-smartflow-cache'), 'MISS');
    assert.equal(first.data.choices[0].message.content, 'first');

    const again = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages: user('what is a b-tree') }, reply('second'))
        .withResponse();
    assert.equal(again.response.headers.get('x-smartflow-cache'), 'HIT');
    assert.equal(again.response.headers.get('x-smartflow-cache-phase'), '1');
    assert.equal(again.data.object, 'chat.completion');
    assert.equal(again.data.choices[0].message.content, 'first');
    assert.equal(again.data.choices[0].finish_reason, 'stop');
    assert.equal(again.data.usage.total_tokens, 0);
});

test('openai: a near miss, and a look-alike with another number that is not one', async () => {
    await openai.chat.completions.create(
        { model: 'gpt-4o-mini', messages: user('How do I sort a list of 10 numbers in Python?') },
        reply('sorted'));

    const near = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages: user('Please, how can I sort a list of 10 numbers in Python?') },
            reply('other'))
        .withResponse();
    assert.equal(near.response.headers.get('x-smartflow-cache'), 'HIT');
    assert.equal(near.response.headers.get('x-smartflow-cache-phase'), '2');
    assert.match(near.response.headers.get('x-smartflow-cache-similarity'), /^0\.[89]\d\d$|^1\.000$/);
    assert.equal(near.data.choices[0].message.content, 'sorted');

    const other = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages: user('How do I sort a list of 20 numbers in Python?') },
            reply('twenty'))
        .withResponse();
    assert.equal(other.response.headers.get('x-smartflow-cache'), 'MISS');
    assert.equal(other.data.choices[0].message.content, 'twenty');
});

test('openai: a streamed answer is stored, and served as a stream', async () => {
    const stream = await openai.chat.completions.create(
        { model: 'gpt-4o-mini', messages: user('Name three rivers.'), stream: true },
        reply('Nile Amazon Danube'));
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'Nile Amazon Danube');

    const { data, response } = await openai.chat.completions
        .create({ model: 'gpt-4o-mini', messages: user('Name three rivers.'), stream: true },
            reply('other'))
        .withResponse();
    assert.equal(response.headers.get('x-smartflow-cache'), 'HIT');
    let cached = '';
    let finish = null;
    for await (const chunk of data) {
        cached += chunk.choices[0]?.delta?.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(cached, 'Nile Amazon Danube');
    assert.equal(finish, 'stop');
});

test('anthropic: a message from the cache, plain and streamed', async () => {
    const params = { model: 'claude-3-5-haiku-latest', max_tokens: 64, messages: user('Why do cats purr?') };

    const first = await anthropic.messages.create(params, reply('contentment')).withResponse();
    assert.equal(first.response.headers.get('x-smartflow-cache'), 'MISS');
    assert.equal(first.data.content[0].text, 'contentment');

    const again = await anthropic.messages.create(params, reply('other')).withResponse();
    assert.equal(again.response.headers.get('x-smartflow-cache'), 'HIT');
    assert.equal(again.data.type, 'message');
    assert.equal(again.data.content[0].type, 'text');
    assert.equal(again.data.content[0].text, 'contentment');
    assert.equal(again.data.stop_reason, 'end_turn');

    const stream = anthropic.messages.stream(params, reply('other'));
    const message = await stream.finalMessage();
    assert.equal(message.content[0].text, 'contentment');
    assert.equal(message.stop_reason, 'end_turn');
});

test('per-request controls through the SDK: no-cache gets a fresh answer', async () => {
    const q = { model: 'gpt-4o-mini', messages: user('Is it fresh?') };
    await openai.chat.completions.create(q, reply('old'));

    const fresh = await openai.chat.completions
        .create(q, { headers: { 'x-mock-reply': 'new', 'Cache-Control': 'no-cache' } })
        .withResponse();
    assert.equal(fresh.response.headers.get('x-smartflow-cache'), 'BYPASS');
    assert.equal(fresh.data.choices[0].message.content, 'new');

    const after = await openai.chat.completions.create(q, reply('newer'));
    assert.equal(after.choices[0].message.content, 'new');
});

test('a bad control header is an OpenAI error the SDK raises', async () => {
    await assert.rejects(
        openai.chat.completions.create({ model: 'gpt-4o-mini', messages: user('hi') },
            { headers: { 'x-smartflow-cache-ttl': 'forever' } }),
        (err) => err instanceof OpenAI.BadRequestError && err.status === 400
            && err.code === 'invalid_cache_control');
});
