// Virtual keys through the official OpenAI SDK for Node.js: the SDK's
// error classes for a wrong, revoked or out-of-scope key and for rate
// limits and budgets, and the x-ratelimit-* headers it sees.
//
//   SMARTFLOW_BASE_URL=http://127.0.0.1:1987/v1 \
//   SMARTFLOW_ADMIN_URL=http://127.0.0.1:1987/api/auth/virtual-keys \
//   SMARTFLOW_KEY=<master key> node --test t/clients/keys.test.mjs
//
// The gateway routes smartflow-echo and other-echo to the built-in echo
// provider; t/clients/004-keys-sdk.t sets it up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { expectError } from './sdk.mjs';

const BASE_URL = process.env.SMARTFLOW_BASE_URL;
const ADMIN_URL = process.env.SMARTFLOW_ADMIN_URL;
const MASTER = process.env.SMARTFLOW_KEY;

if (!BASE_URL || !ADMIN_URL || !MASTER) {
    throw new Error('SMARTFLOW_BASE_URL, SMARTFLOW_ADMIN_URL and SMARTFLOW_KEY must name a running gateway');
}

// no retries: the SDK would otherwise retry a 429 by itself
const client = (apiKey) => new OpenAI({ baseURL: BASE_URL, apiKey, maxRetries: 0, timeout: 20000 });

const hello = { model: 'smartflow-echo', messages: [{ role: 'user', content: 'hello' }] };

let names = 0;

// A new key through the admin API; returns the key object with its secret.
async function createKey(fields = {}) {
    const res = await fetch(ADMIN_URL, {
        method: 'POST',
        headers: { authorization: `Bearer ${MASTER}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `sdk-${process.pid}-${++names}`, ...fields }),
    });
    assert.equal(res.status, 201);
    const key = await res.json();
    assert.match(key.key, /^sk-sf-[0-9a-f]{48}$/);
    return key;
}

test('a virtual key works like a provider key', async () => {
    const key = await createKey({ team: 'sdk' });
    const reply = await client(key.key).chat.completions.create(hello);
    assert.equal(reply.choices[0].message.content, 'Echo: hello');
});

test('an unknown key is an AuthenticationError', async () => {
    await expectError(
        client('sk-sf-' + '0'.repeat(48)).chat.completions.create(hello),
        OpenAI.AuthenticationError, { status: 401, code: 'invalid_api_key' });
});

test('a revoked key is an AuthenticationError that says so', async () => {
    const key = await createKey();
    const res = await fetch(`${ADMIN_URL}/${key.id}`, {
        method: 'DELETE', headers: { authorization: `Bearer ${MASTER}` },
    });
    assert.equal(res.status, 200);
    const err = await expectError(client(key.key).chat.completions.create(hello),
        OpenAI.AuthenticationError, { status: 401, code: 'invalid_api_key' });
    assert.match(err.message, /has been revoked/);
});

test('a model outside the key is a PermissionDeniedError', async () => {
    const key = await createKey({ models: ['smartflow-*'] });
    await expectError(
        client(key.key).chat.completions.create({ ...hello, model: 'other-echo' }),
        OpenAI.PermissionDeniedError,
        { status: 403, code: 'model_not_allowed', param: 'model', type: 'permission_error' });
});

test('requests per minute: the headers, then a RateLimitError with Retry-After', async () => {
    const key = await createKey({ rpm: 2, tpm: 100000 });
    const sdk = client(key.key);

    const { response } = await sdk.chat.completions.create(hello).withResponse();
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), '2');
    assert.equal(response.headers.get('x-ratelimit-remaining-requests'), '1');
    assert.match(response.headers.get('x-ratelimit-reset-requests'), /^\d+s$/);
    assert.equal(response.headers.get('x-ratelimit-limit-tokens'), '100000');
    assert.match(response.headers.get('x-ratelimit-remaining-tokens'), /^\d+$/);

    await sdk.chat.completions.create(hello);

    const err = await expectError(sdk.chat.completions.create(hello),
        OpenAI.RateLimitError, { status: 429, code: 'rate_limit_exceeded', type: 'requests' });
    assert.match(err.headers.get('retry-after'), /^\d+$/);
    assert.equal(err.headers.get('x-ratelimit-remaining-requests'), '0');
    assert.match(err.message, /requests per min \(RPM\): Limit 2, Used 2/);
});

test('a spent budget is a RateLimitError with code insufficient_quota', async () => {
    const key = await createKey({ budget_usd: 0 });
    await expectError(client(key.key).chat.completions.create(hello),
        OpenAI.RateLimitError, { status: 429, code: 'insufficient_quota', type: 'insufficient_quota' });
});

test('the admin API refuses a virtual key', async () => {
    const key = await createKey();
    const res = await fetch(ADMIN_URL, { headers: { authorization: `Bearer ${key.key}` } });
    assert.equal(res.status, 403);
    assert.equal((await res.json()).error.code, 'master_key_required');
});
