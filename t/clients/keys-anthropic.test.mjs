// Virtual keys through the official Anthropic SDK for Node.js (the
// gateway's /anthropic endpoint): the SDK's error classes for a wrong,
// revoked or out-of-scope key and for rate limits and budgets, with the
// headers it sees.
//
//   SMARTFLOW_ANTHROPIC_BASE_URL=http://127.0.0.1:1987/anthropic \
//   SMARTFLOW_ADMIN_URL=http://127.0.0.1:1987/api/auth/virtual-keys \
//   SMARTFLOW_KEY=<master key> node --test t/clients/keys-anthropic.test.mjs
//
// t/clients/004-keys-sdk.t sets the gateway up (smartflow-echo and
// other-echo on the built-in echo provider).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';

const BASE_URL = process.env.SMARTFLOW_ANTHROPIC_BASE_URL;
const ADMIN_URL = process.env.SMARTFLOW_ADMIN_URL;
const MASTER = process.env.SMARTFLOW_KEY;

if (!BASE_URL || !ADMIN_URL || !MASTER) {
    throw new Error('SMARTFLOW_ANTHROPIC_BASE_URL, SMARTFLOW_ADMIN_URL and SMARTFLOW_KEY must name a running gateway');
}

// no retries: the SDK would otherwise retry a 429 by itself
const client = (apiKey) => new Anthropic({ baseURL: BASE_URL, apiKey, maxRetries: 0, timeout: 20000 });

const hello = { model: 'smartflow-echo', max_tokens: 32, messages: [{ role: 'user', content: 'hello' }] };

let names = 0;

async function createKey(fields = {}) {
    const res = await fetch(ADMIN_URL, {
        method: 'POST',
        headers: { authorization: `Bearer ${MASTER}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `anthropic-sdk-${process.pid}-${++names}`, ...fields }),
    });
    assert.equal(res.status, 201);
    const key = await res.json();
    assert.match(key.key, /^sk-sf-[0-9a-f]{48}$/);
    return key;
}

// The SDK's error class, its status, and Anthropic's error object it parsed
async function expectError(promise, Class, status, type) {
    let error;
    try {
        await promise;
    } catch (err) {
        error = err;
    }
    assert.ok(error, `expected ${Class.name}, the call succeeded`);
    assert.ok(error instanceof Class,
        `expected ${Class.name}, got ${error.constructor.name}: ${error.message}`);
    assert.equal(error.status, status);
    assert.equal(error.error?.type, 'error', `an Anthropic error object (${error.message})`);
    assert.equal(error.error?.error?.type, type, `error.error.type (${error.message})`);
    return error;
}

test('a virtual key works as x-api-key, like an Anthropic key', async () => {
    const key = await createKey();
    const reply = await client(key.key).messages.create(hello);
    assert.equal(reply.type, 'message');
    assert.equal(reply.content[0].text, 'Echo: hello');
});

test('an unknown key is an AuthenticationError', async () => {
    const err = await expectError(client('sk-sf-' + '0'.repeat(48)).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
    assert.match(err.error.error.message, /Incorrect API key provided/);
});

test('a revoked key is an AuthenticationError that says so', async () => {
    const key = await createKey();
    const res = await fetch(`${ADMIN_URL}/${key.id}`, {
        method: 'DELETE', headers: { authorization: `Bearer ${MASTER}` },
    });
    assert.equal(res.status, 200);
    const err = await expectError(client(key.key).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
    assert.match(err.error.error.message, /has been revoked/);
});

test('a model outside the key is a PermissionDeniedError', async () => {
    const key = await createKey({ models: ['smartflow-*'] });
    const err = await expectError(client(key.key).messages.create({ ...hello, model: 'other-echo' }),
        Anthropic.PermissionDeniedError, 403, 'permission_error');
    assert.match(err.error.error.message, /not allowed for this API key/);
});

test('requests per minute: the headers, then a RateLimitError with Retry-After', async () => {
    const key = await createKey({ rpm: 2 });
    const sdk = client(key.key);

    const { response } = await sdk.messages.create(hello).withResponse();
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), '2');
    assert.equal(response.headers.get('x-ratelimit-remaining-requests'), '1');

    await sdk.messages.create(hello);

    const err = await expectError(sdk.messages.create(hello),
        Anthropic.RateLimitError, 429, 'rate_limit_error');
    assert.match(err.headers.get('retry-after'), /^\d+$/);
    assert.equal(err.headers.get('x-ratelimit-remaining-requests'), '0');
    assert.match(err.error.error.message, /requests per min \(RPM\): Limit 2, Used 2/);
});

test('a spent budget is a RateLimitError about the quota', async () => {
    const key = await createKey({ budget_usd: 0 });
    const err = await expectError(client(key.key).messages.create(hello),
        Anthropic.RateLimitError, 429, 'rate_limit_error');
    assert.match(err.error.error.message, /exceeded your current quota/);
});
