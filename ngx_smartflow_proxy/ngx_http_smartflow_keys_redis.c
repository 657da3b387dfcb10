/*
 * Virtual keys shared by nodes through Redis (smartflow_redis).  Redis
 * holds the truth; the keys zone stays as every node's cache of it.
 *
 * Keys: each record (the state file's JSON for one key: digests, never
 * secrets) is in the hash sf:vk under its id, with a revision in
 * sf:vk:rev taken from the counter sf:vk:ver, which every change bumps.
 * Every worker polls that counter every 250 ms and pulls the records
 * newer than those its zone holds; a node that meets a key its zone does
 * not know pulls at once, so a key made on one node works on the next
 * request to another.  A poll rather than pub/sub: it needs no second
 * connection per worker, and it cannot lose a message across a
 * reconnect.  Ids come from INCR sf:vk:next.  sf:vk:epoch tells a Redis
 * that lost its data (a restart without persistence): the zones then
 * pull everything and give back what they hold.
 *
 * Limits: one script reserves a request's estimate (requests per minute,
 * tokens per minute, budget) in the key's counters hash sf:vk:c:ID, and
 * another settles the actual usage after it, both atomic in Redis and
 * timed by Redis's clock, so racing nodes see each other's reservations.
 * For a busy key the reservation may also lease room for more requests
 * like it (at most a sixteenth of what each limit has left): the worker
 * serves them without a round trip and gives back what it did not use
 * with the settlements, gathered every few milliseconds.
 *
 * Redis away: fail=open serves from the zone and counts what it served
 * apart; when Redis answers again each worker gives that back (absorb)
 * and pulls, and what the zone counts apart after that (a request
 * admitted without Redis and settled once it answers) goes with the
 * next poll of any worker that reaches Redis.  fail=closed refuses
 * virtual keys with 503.  Key changes need Redis: the admin API answers
 * 503 without it.
 */

#include <openssl/rand.h>

#include "ngx_http_smartflow_keys.h"
#include "ngx_smartflow_redis.h"


#define NGX_SMARTFLOW_KEYS_POLL     250     /* ms */
#define NGX_SMARTFLOW_KEYS_GATHER   10      /* ms settlements gather */
#define NGX_SMARTFLOW_KEYS_SETTLES  64      /* keys gathered at most */
#define NGX_SMARTFLOW_KEYS_LEASES   64      /* keys with a lease at most */
#define NGX_SMARTFLOW_KEYS_LEASE    50      /* ms a lease lasts */
#define NGX_SMARTFLOW_KEYS_LEASE_MAX  256   /* requests a lease holds */
#define NGX_SMARTFLOW_KEYS_SHARE    16      /* of the room left, 1/16 */


typedef struct ngx_http_smartflow_keys_ticket_s
    ngx_http_smartflow_keys_ticket_t;

/* a request's wait for Redis */
typedef struct {
    ngx_http_request_t                 *r;
    ngx_http_smartflow_keys_ticket_t   *ticket;
    ngx_http_smartflow_keys_verdict_t   verdict;
    ngx_uint_t                          pulled;
    ngx_uint_t                          id;         /* from INCR */
    ngx_uint_t                          status;
    ngx_str_t                           json;
    u_char                              token[48];
    size_t                              token_len;
    unsigned                            waiting:1;
    unsigned                            in_redis:1; /* reserved there */
    unsigned                            leased:1;   /* from a lease */
    unsigned                            queued:1;   /* waits for a grant */
    ngx_queue_t                         queue;
    unsigned                            id_failed:1;
    unsigned                            refreshed:1;
    unsigned                            secret:1;   /* json holds one */
} ngx_http_smartflow_keys_rq_t;


/*
 * Outlives the request if it has to: its pool cleanup clears rq.  A
 * reservation's ticket keeps what its answer needs without the request.
 */
struct ngx_http_smartflow_keys_ticket_s {
    ngx_http_smartflow_keys_rq_t       *rq;
    ngx_http_smartflow_keys_ticket_t   *next;
    ngx_uint_t                          id;
    ngx_uint_t                          period;
    time_t                              period_start;
    uint64_t                            est_tokens;
    uint64_t                            est_cost;
    uint64_t                            want;       /* a lease asked for */
    u_char                              token[48];
    size_t                              token_len;
    unsigned                            only:1;     /* a lease, no request */
};


/* settlements of one key gathered before they go to Redis */
typedef struct {
    ngx_uint_t                  id;
    uint64_t                    window;
    time_t                      period_start;
    time_t                      period_now;
    uint64_t                    est_tokens;
    uint64_t                    est_cost;
    uint64_t                    prompt;
    uint64_t                    completion;
    uint64_t                    cost;
    uint64_t                    leased;     /* requests served from leases */
    uint64_t                    unused;     /* leased requests given back */
} ngx_http_smartflow_keys_settle_t;


/*
 * A worker's lease of one busy key: requests, tokens and money reserved
 * in Redis ahead of the requests that use them, so that those need no
 * round trip.  What is left when it ends goes back with the settlements.
 */
typedef struct {
    ngx_uint_t                  id;         /* 0: a free slot */
    ngx_uint_t                  period;     /* the key's budget period */
    ngx_msec_t                  until;      /* ngx_current_msec it ends */
    ngx_msec_t                  window_end; /* ngx_current_msec */
    uint64_t                    window;     /* Redis ms it began */
    time_t                      period_start;
    uint64_t                    requests;   /* granted; 0: none */
    uint64_t                    tokens;
    uint64_t                    cost;
    uint64_t                    used_requests;
    uint64_t                    used_tokens;
    uint64_t                    used_cost;
    uint64_t                    base_requests;  /* the window's, without */
    uint64_t                    base_tokens;    /* the lease, at the grant */

    /* demand: this worker's requests for the key in the last lease time */
    ngx_msec_t                  slot;
    ngx_uint_t                  count;
    ngx_uint_t                  last;
    ngx_queue_t                 waiters;    /* requests awaiting it */
    unsigned                    pending:1;  /* a grant is asked for */
    unsigned                    starved:1;  /* the last one gave none */
} ngx_http_smartflow_keys_lease_t;


/* a script run without a request */
typedef struct {
    ngx_queue_t                 queue;
    ngx_uint_t                  script;
    ngx_uint_t                  id;         /* the key */
    ngx_uint_t                  tries;
    ngx_uint_t                  sent;       /* written to a connection */
    int                         nkeys;
    int                         argc;
    const char                 *argv[24];
    size_t                      len[24];
} ngx_http_smartflow_keys_op_t;


/*
 * A script run without a request that a worker could not see answered
 * before it exited, kept in the keys zone: its arguments follow.
 */
typedef struct {
    ngx_queue_t                 queue;
    ngx_uint_t                  script;
    ngx_uint_t                  id;
    ngx_uint_t                  tries;
    ngx_uint_t                  sent;
    int                         nkeys;
    int                         n;
    size_t                      len[21];
} ngx_http_smartflow_keys_kept_t;


enum {
    NGX_SF_SCRIPT_PULL = 0,
    NGX_SF_SCRIPT_PUT,
    NGX_SF_SCRIPT_RESERVE,
    NGX_SF_SCRIPT_SETTLE,
    NGX_SF_SCRIPT_ABSORB,
    NGX_SF_SCRIPT_CANCEL,
    NGX_SF_SCRIPT_MAX
};


static ngx_http_smartflow_keys_rq_t *ngx_http_smartflow_keys_rq(
    ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx);
static void ngx_http_smartflow_keys_rq_cleanup(void *data);
static ngx_http_smartflow_keys_ticket_t *ngx_http_smartflow_keys_ticket(
    ngx_http_smartflow_keys_rq_t *rq);
static ngx_http_smartflow_keys_rq_t *ngx_http_smartflow_keys_punch(
    ngx_http_smartflow_keys_ticket_t *t);
static void ngx_http_smartflow_keys_wait(ngx_http_request_t *r,
    ngx_http_smartflow_keys_rq_t *rq);
static void ngx_http_smartflow_keys_pulled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_keys_api_pulled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static ngx_int_t ngx_http_smartflow_keys_redis_pull_with(
    ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx,
    ngx_smartflow_redis_pt handler);
static void ngx_http_smartflow_keys_apply(ngx_smartflow_redis_t *rd,
    redisReply *reply);
static void ngx_http_smartflow_keys_poll(ngx_event_t *ev);
static void ngx_http_smartflow_keys_polled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_keys_up(ngx_smartflow_redis_t *rd);
static void ngx_http_smartflow_keys_quit(ngx_smartflow_redis_t *rd);
static void ngx_http_smartflow_keys_absorb(ngx_smartflow_redis_t *rd,
    ngx_uint_t all);
static ngx_uint_t ngx_http_smartflow_keys_keep(ngx_smartflow_redis_t *rd);
static ngx_http_smartflow_keys_kept_t *ngx_http_smartflow_keys_kept(
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t script, ngx_uint_t id,
    int nkeys, ngx_uint_t tries, ngx_uint_t sent, int n, u_char **args,
    size_t *lens);
static void ngx_http_smartflow_keys_take(ngx_smartflow_redis_t *rd);
static ngx_http_smartflow_keys_op_t *ngx_http_smartflow_keys_op(
    ngx_uint_t script, ngx_uint_t id, int nkeys, int n, u_char **args,
    size_t *lens);
static void ngx_http_smartflow_keys_op_submit(
    ngx_http_smartflow_keys_op_t *op);
static void ngx_http_smartflow_keys_op_done(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static size_t ngx_http_smartflow_keys_token(u_char *buf);
static void ngx_http_smartflow_keys_flush(ngx_event_t *ev);
static void ngx_http_smartflow_keys_send_settles(void);
static ngx_http_smartflow_keys_settle_t *ngx_http_smartflow_keys_settle_at(
    ngx_uint_t id, uint64_t window, time_t period_start, time_t period_now);
static ngx_http_smartflow_keys_lease_t *ngx_http_smartflow_keys_lease(
    ngx_uint_t id, ngx_uint_t create);
static ngx_int_t ngx_http_smartflow_keys_lease_take(
    ngx_http_smartflow_keys_lease_t *l, ngx_http_smartflow_vkey_t *vkey);
static void ngx_http_smartflow_keys_lease_grant(ngx_uint_t id,
    ngx_uint_t period, ngx_http_smartflow_vkey_t *vkey, uint64_t n,
    uint64_t reset, uint64_t used, uint64_t tokens);
static void ngx_http_smartflow_keys_lease_end(
    ngx_http_smartflow_keys_lease_t *l);
static void ngx_http_smartflow_keys_lease_wake(
    ngx_http_smartflow_keys_lease_t *l);
static void ngx_http_smartflow_keys_lease_ask(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_keys_lease_t *l, ngx_http_smartflow_vkey_t *vkey);
static ngx_msec_t ngx_http_smartflow_keys_leases_end(ngx_uint_t all);
static void ngx_http_smartflow_keys_reserved(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_keys_window_snapshot(redisReply *reply,
    ngx_uint_t id);
static void ngx_http_smartflow_keys_snapshot(redisReply *reply,
    ngx_uint_t from, ngx_uint_t id);
static void ngx_http_smartflow_keys_got_id(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static ngx_int_t ngx_http_smartflow_keys_unshared(ngx_http_request_t *r,
    ngx_http_smartflow_keys_rq_t *rq);
static void ngx_http_smartflow_keys_stored(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_keys_refreshed(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static uint64_t ngx_http_smartflow_keys_num(redisReply *reply);
static size_t ngx_http_smartflow_keys_counters(u_char *buf, ngx_uint_t id);


/*
 * KEYS none.  ARGV: the version this zone applied, the epoch it knows.
 * Returns {version, epoch, id, rev, record, id, rev, record, ...}.
 */
static char ngx_http_smartflow_keys_lua_pull[] =
"local ep = redis.call('GET', 'sf:vk:epoch')\n"
"if not ep then\n"
"  local t = redis.call('TIME')\n"
"  ep = t[1] .. '.' .. t[2]\n"
"  redis.call('SET', 'sf:vk:epoch', ep)\n"
"end\n"
"local ver = tonumber(redis.call('GET', 'sf:vk:ver') or '0')\n"
"local since = tonumber(ARGV[1])\n"
"if ep ~= ARGV[2] then since = -1 end\n"
"local out = {ver, ep}\n"
"if ver == since then return out end\n"
"local revs = redis.call('HGETALL', 'sf:vk:rev')\n"
"for i = 1, #revs, 2 do\n"
"  if tonumber(revs[i + 1]) > since then\n"
"    out[#out + 1] = revs[i]\n"
"    out[#out + 1] = revs[i + 1]\n"
"    out[#out + 1] = redis.call('HGET', 'sf:vk', revs[i]) or ''\n"
"  end\n"
"end\n"
"return out\n";


/*
 * final(id, record): Redis holds the key revoked and the record does not
 * revoke it; a revocation is final, no record of the put and absorb
 * scripts undoes it
 */
#define NGX_SF_LUA_FINAL                                                     \
"local function final(id, rec)\n"                                            \
"  local cur = redis.call('HGET', 'sf:vk', id)\n"                             \
"  if not cur or (tonumber(rec.revoked) or 0) > 0 then return false end\n"   \
"  local ok, o = pcall(cjson.decode, cur)\n"                                 \
"  return ok and (tonumber(o.revoked) or 0) > 0\n"                           \
"end\n"


/*
 * ARGV: id, record.  Returns the record's revision, or an error when
 * another key has the name (two nodes made it at once), or when the key
 * is revoked in Redis and the record is not (a node changed a copy it
 * had not yet seen revoked): a revocation is final.  A revoked key's
 * name is free again.
 */
static char ngx_http_smartflow_keys_lua_put[] =
"local rec = cjson.decode(ARGV[2])\n"
"local name = rec.name\n"
NGX_SF_LUA_FINAL
"if final(ARGV[1], rec) then return redis.error_reply('REVOKED key') end\n"
"local owner = redis.call('HGET', 'sf:vk:names', name)\n"
"local old = redis.call('HGET', 'sf:vk:nameof', ARGV[1])\n"
"if (tonumber(rec.revoked) or 0) > 0 then\n"
"  if old and redis.call('HGET', 'sf:vk:names', old) == ARGV[1] then\n"
"    redis.call('HDEL', 'sf:vk:names', old)\n"
"  end\n"
"  redis.call('HDEL', 'sf:vk:nameof', ARGV[1])\n"
"else\n"
"  if owner and owner ~= ARGV[1] then\n"
"    return redis.error_reply('DUPLICATE name')\n"
"  end\n"
"  if old and old ~= name then redis.call('HDEL', 'sf:vk:names', old) end\n"
"  redis.call('HSET', 'sf:vk:names', name, ARGV[1])\n"
"  redis.call('HSET', 'sf:vk:nameof', ARGV[1], name)\n"
"end\n"
"local v = redis.call('INCR', 'sf:vk:ver')\n"
"redis.call('HSET', 'sf:vk', ARGV[1], ARGV[2])\n"
"redis.call('HSET', 'sf:vk:rev', ARGV[1], v)\n"
"if tonumber(redis.call('GET', 'sf:vk:next') or '0') < tonumber(ARGV[1])\n"
"then redis.call('SET', 'sf:vk:next', ARGV[1]) end\n"
"return v\n";


/*
 * The counters, as reserve and settle return them after their own
 * fields: window start (Redis ms), window requests, window tokens, window
 * reserved tokens, period start, spent, reserved, period requests,
 * period prompt and completion tokens, lifetime requests, prompt and
 * completion tokens, spend.
 */
#define NGX_SF_LUA_SNAPSHOT                                                  \
"local function snap(c)\n"                                                   \
"  local f = redis.call('HMGET', c, 'w', 'wr', 'wt', 'wres', 'ps', 'sp',\n"  \
"    'res', 'pr', 'pp', 'pc', 'r', 'p', 'c', 's')\n"                         \
"  for i = 1, 14 do f[i] = tonumber(f[i] or '0') end\n"                      \
"  return f\n"                                                               \
"end\n"                                                                      \
"local function roll(c, f, now, ps)\n"                                       \
"  if now >= f[1] + 60000 or now < f[1] then\n"                              \
"    f[1] = now f[2] = 0 f[3] = 0 f[4] = 0\n"                                \
"  end\n"                                                                    \
"  if f[5] ~= ps then\n"                                                     \
"    f[5] = ps f[6] = 0 f[7] = 0 f[8] = 0 f[9] = 0 f[10] = 0\n"              \
"  end\n"                                                                    \
"end\n"                                                                      \
"local names = {'w', 'wr', 'wt', 'wres', 'ps', 'sp', 'res', 'pr', 'pp',\n"   \
"  'pc', 'r', 'p', 'c', 's'}\n"                                              \
"local function save(c, f)\n"                                                \
"  local a = {}\n"                                                           \
"  for i = 1, 14 do a[#a + 1] = names[i] a[#a + 1] = f[i] end\n"             \
"  redis.call('HSET', c, unpack(a))\n"                                       \
"end\n"                                                                      \
"local t = redis.call('TIME')\n"                                             \
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"


/*
 * KEYS: the counters.  ARGV: rpm, tpm, budget (-1: unlimited), estimated
 * tokens, estimated cost, period start, a token naming the request, how
 * many more such requests the worker would like leased, and 1 when it
 * asks for the lease only (no request of its own).  Returns
 * {verdict (0 admitted, 1 rpm, 2 tpm, 3 budget), ms until the window
 * ends, window start, its requests, its tokens used and reserved, spent,
 * reserved, period requests, lifetime requests, requests leased}.  A
 * lease takes at most a sixteenth of the room each limit has left, so
 * that near a limit every request is decided here, one by one.  The
 * token keeps what was reserved for two minutes, for a settlement or a
 * cancel that may come more than once.
 */
static char ngx_http_smartflow_keys_lua_reserve[] =
"local c, tk = KEYS[1], 'sf:t:' .. ARGV[7]\n"
"if redis.call('EXISTS', tk) == 1 then return {-1} end\n"
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local f = redis.call('HMGET', c, 'w', 'wr', 'wt', 'wres', 'ps', 'sp',\n"
"  'res', 'pr', 'r')\n"
"for i = 1, 9 do f[i] = tonumber(f[i] or '0') end\n"
"if now >= f[1] + 60000 or now < f[1] then\n"
"  f[1] = now f[2] = 0 f[3] = 0 f[4] = 0\n"
"end\n"
"local ps = tonumber(ARGV[6])\n"
"if f[5] ~= ps then\n"
"  f[5] = ps f[6] = 0 f[7] = 0 f[8] = 0\n"
"  redis.call('HSET', c, 'pp', 0, 'pc', 0)\n"
"end\n"
"local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]),\n"
"  tonumber(ARGV[3])\n"
"local et, ec = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
"local v = 0\n"
"if rpm >= 0 and f[2] >= rpm then v = 1\n"
"elseif tpm >= 0 and f[3] + f[4] + et > tpm then v = 2\n"
"elseif budget >= 0 and (f[6] >= budget or ec > budget - f[6] - f[7])\n"
"then v = 3 end\n"
"local n, one = 0, 1\n"
"if ARGV[9] == '1' then one = 0 end\n"
"if v == 0 then\n"
"  f[2] = f[2] + one f[4] = f[4] + one * et f[7] = f[7] + one * ec\n"
"  f[8] = f[8] + one f[9] = f[9] + one\n"
"  n = tonumber(ARGV[8])\n"
"  if rpm >= 0 then n = math.min(n, math.floor((rpm - f[2]) / 16)) end\n"
"  if tpm >= 0 then\n"
"    n = math.min(n, math.floor((tpm - f[3] - f[4]) / (16 * et)))\n"
"  end\n"
"  if budget >= 0 and ec > 0 then\n"
"    n = math.min(n, math.floor((budget - f[6] - f[7]) / (16 * ec)))\n"
"  end\n"
"  if n > 0 then\n"
"    f[2] = f[2] + n f[4] = f[4] + n * et f[7] = f[7] + n * ec\n"
"  else n = 0 end\n"
"  redis.call('SET', tk, f[1] .. ' ' .. f[5] .. ' ' .. et .. ' ' .. ec\n"
"    .. ' ' .. n .. ' ' .. one, 'EX', 120)\n"
"end\n"
"redis.call('HSET', c, 'w', f[1], 'wr', f[2], 'wt', f[3], 'wres', f[4],\n"
"  'ps', f[5], 'sp', f[6], 'res', f[7], 'pr', f[8], 'r', f[9])\n"
"return {v, f[1] + 60000 - now, f[1], f[2], f[3] + f[4], f[6], f[7],\n"
"  f[8], f[9], n}\n";


/*
 * KEYS: the counters.  ARGV: the reservation's window and period, its
 * tokens and cost, then prompt and completion tokens, cost, the period
 * start now, the reservation's token, the requests served from leases
 * (counted in the period and the lifetime now) and the leased requests
 * not used (given back to the window).  Returns {counters...}.  Once
 * only: sent again after a lost answer, it changes nothing.
 */
static char ngx_http_smartflow_keys_lua_settle[] =
NGX_SF_LUA_SNAPSHOT
"local c, tk = KEYS[1], 'sf:t:' .. ARGV[9]\n"
"local f = snap(c)\n"
"if redis.call('GET', tk) == 's' then return f end\n"
"roll(c, f, now, tonumber(ARGV[8]))\n"
"local p, o, cost = tonumber(ARGV[5]), tonumber(ARGV[6]),\n"
"  tonumber(ARGV[7])\n"
"if f[1] == tonumber(ARGV[1]) then\n"
"  f[4] = math.max(0, f[4] - tonumber(ARGV[3]))\n"
"  f[2] = math.max(0, f[2] - tonumber(ARGV[11]))\n"
"end\n"
"if f[5] == tonumber(ARGV[2]) then\n"
"  f[7] = math.max(0, f[7] - tonumber(ARGV[4]))\n"
"end\n"
"f[3] = f[3] + p + o f[6] = f[6] + cost f[9] = f[9] + p f[10] = f[10] + o\n"
"f[12] = f[12] + p f[13] = f[13] + o f[14] = f[14] + cost\n"
"f[8] = f[8] + tonumber(ARGV[10]) f[11] = f[11] + tonumber(ARGV[10])\n"
"save(c, f)\n"
"redis.call('SET', tk, 's', 'EX', 120)\n"
"return f\n";


/*
 * A reservation whose answer was lost: undone if Redis made it, and
 * refused if it comes later.  KEYS: the counters.  ARGV: the token.
 */
static char ngx_http_smartflow_keys_lua_cancel[] =
"local tk, c = 'sf:t:' .. ARGV[1], KEYS[1]\n"
"local v = redis.call('GET', tk)\n"
"redis.call('SET', tk, 'x', 'EX', 120)\n"
"if not v or v == 'x' or v == 's' then return 0 end\n"
"local w, ps, et, ec, n, one = string.match(v,\n"
"  '(%S+) (%S+) (%S+) (%S+) ?(%S*) ?(%S*)')\n"
"n = tonumber(n) or 0\n"
"one = tonumber(one) or 1\n"
"local f = redis.call('HMGET', c, 'w', 'ps', 'wr', 'wres', 'res', 'pr',\n"
"  'r')\n"
"local function num(x) return tonumber(x or '0') end\n"
"if f[1] == w then\n"
"  redis.call('HSET', c, 'wr', math.max(0, num(f[3]) - one - n),\n"
"    'wres', math.max(0, num(f[4]) - (one + n) * tonumber(et)))\n"
"end\n"
"if f[2] == ps then\n"
"  redis.call('HSET', c, 'res',\n"
"    math.max(0, num(f[5]) - (one + n) * tonumber(ec)),\n"
"    'pr', math.max(0, num(f[6]) - one))\n"
"end\n"
"redis.call('HSET', c, 'r', math.max(0, num(f[7]) - one))\n"
"return 1\n";


/*
 * After an outage.  KEYS: the counters.  ARGV: id, record, 1 if changed
 * here since it was shared, then the zone's period start, spent, period
 * requests, prompt, completion, lifetime requests, prompt, completion,
 * spend (what this node last saw of Redis), then what it served
 * meanwhile: requests, prompt, completion, cost, and the cost reserved in
 * Redis but settled here, a token that makes it count once if it is
 * sent again, and the epoch of the Redis the node's view is of.  When
 * Redis kept its data (the epoch is that one) what was served meanwhile
 * is added to its counters, which have or will have every settlement of
 * every node: exact.  When it lost them, each counter becomes the larger
 * of Redis's and this node's view, plus what was served meanwhile: a
 * rebuild from the freshest view of the nodes.  Returns {counters...}.
 */
static char ngx_http_smartflow_keys_lua_absorb[] =
NGX_SF_LUA_SNAPSHOT
"local id, c, a = ARGV[1], KEYS[1], ARGV\n"
"local tk = 'sf:t:' .. a[18]\n"
"if redis.call('EXISTS', tk) == 1 then return snap(c) end\n"
"redis.call('SET', tk, 'a', 'EX', 3600)\n"
NGX_SF_LUA_FINAL
"local rec = cjson.decode(a[2])\n"
"if not final(id, rec)\n"
"  and (a[3] == '1' or not redis.call('HGET', 'sf:vk:rev', id))\n"
"then\n"
"  local name = rec.name\n"
"  if (tonumber(rec.revoked) or 0) == 0\n"
"    and not redis.call('HGET', 'sf:vk:names', name) then\n"
"    redis.call('HSET', 'sf:vk:names', name, id)\n"
"    redis.call('HSET', 'sf:vk:nameof', id, name)\n"
"  end\n"
"  local v = redis.call('INCR', 'sf:vk:ver')\n"
"  redis.call('HSET', 'sf:vk', id, a[2])\n"
"  redis.call('HSET', 'sf:vk:rev', id, v)\n"
"end\n"
"if tonumber(redis.call('GET', 'sf:vk:next') or '0') < tonumber(id)\n"
"then redis.call('SET', 'sf:vk:next', id) end\n"
"if redis.call('EXISTS', c) == 0 then\n"
"  redis.call('HSET', c, 'w', 0, 'wr', 0, 'wt', 0, 'wres', 0, 'ps', a[4],\n"
"    'res', 0)\n"
"end\n"
"local kept = redis.call('GET', 'sf:vk:epoch') == a[19]\n"
"local function grow(f, base, d)\n"
"  local v = tonumber(redis.call('HGET', c, f) or '0')\n"
"  if not kept and tonumber(base) > v then v = tonumber(base) end\n"
"  redis.call('HSET', c, f, v + tonumber(d))\n"
"end\n"
"grow('sp', a[5], a[16]) grow('pr', a[6], a[13]) grow('pp', a[7], a[14])\n"
"grow('pc', a[8], a[15]) grow('r', a[9], a[13]) grow('p', a[10], a[14])\n"
"grow('c', a[11], a[15]) grow('s', a[12], a[16])\n"
"local res = tonumber(redis.call('HGET', c, 'res') or '0')\n"
"redis.call('HSET', c, 'res', math.max(0, res - tonumber(a[17])))\n"
"return snap(c)\n";


static ngx_uint_t                         ngx_sf_scripts[NGX_SF_SCRIPT_MAX];
static char                              *ngx_sf_script_names[] = {
    "pull", "put", "reserve", "settle", "absorb", "cancel"
};
static ngx_http_smartflow_keys_zone_t    *ngx_sf_kz;
static ngx_event_t                        ngx_sf_poll_event;
static ngx_uint_t                         ngx_sf_polling;
static ngx_http_smartflow_keys_ticket_t  *ngx_sf_tickets;
static ngx_queue_t                        ngx_sf_retry;
static ngx_event_t                        ngx_sf_flush_event;
static ngx_http_smartflow_keys_settle_t
    ngx_sf_settles[NGX_SMARTFLOW_KEYS_SETTLES];
static ngx_uint_t                         ngx_sf_nsettles;
static ngx_http_smartflow_keys_lease_t
    ngx_sf_leases[NGX_SMARTFLOW_KEYS_LEASES];
static uint64_t                           ngx_sf_node;
static ngx_uint_t                         ngx_sf_serial;


/*
 * smartflow_redis ADDR [password=P] [db=N] [timeout=TIME]
 *     [fail=open|closed];
 */
char *
ngx_http_smartflow_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    char                   *rv;
    ngx_str_t              *value;
    ngx_smartflow_redis_t  *rd;

    if (smcf->keys == NULL) {
        return "needs smartflow_keys_zone before it";
    }

    if (smcf->keys->redis) {
        return "is duplicate";
    }

    rd = ngx_pcalloc(cf->pool, sizeof(ngx_smartflow_redis_t));
    if (rd == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    rv = ngx_smartflow_redis_parse(cf, rd, &value[1], cf->args->nelts - 1);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_smartflow_redis_script(cf, rd, ngx_http_smartflow_keys_lua_pull,
                                   &ngx_sf_scripts[NGX_SF_SCRIPT_PULL])
           != NGX_OK
        || ngx_smartflow_redis_script(cf, rd,
                                      ngx_http_smartflow_keys_lua_put,
                                      &ngx_sf_scripts[NGX_SF_SCRIPT_PUT])
           != NGX_OK
        || ngx_smartflow_redis_script(cf, rd,
                                      ngx_http_smartflow_keys_lua_reserve,
                                      &ngx_sf_scripts[NGX_SF_SCRIPT_RESERVE])
           != NGX_OK
        || ngx_smartflow_redis_script(cf, rd,
                                      ngx_http_smartflow_keys_lua_settle,
                                      &ngx_sf_scripts[NGX_SF_SCRIPT_SETTLE])
           != NGX_OK
        || ngx_smartflow_redis_script(cf, rd,
                                      ngx_http_smartflow_keys_lua_absorb,
                                      &ngx_sf_scripts[NGX_SF_SCRIPT_ABSORB])
           != NGX_OK
        || ngx_smartflow_redis_script(cf, rd,
                                      ngx_http_smartflow_keys_lua_cancel,
                                      &ngx_sf_scripts[NGX_SF_SCRIPT_CANCEL])
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    rd->on_up = ngx_http_smartflow_keys_up;
    rd->on_quit = ngx_http_smartflow_keys_quit;
    smcf->keys->redis = rd;

    return NGX_CONF_OK;
}


/* in each worker: connect, and poll the shared version */
void
ngx_http_smartflow_keys_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_smartflow_keys_zone_t *kz)
{
    ngx_smartflow_redis_t  *rd;

    rd = kz->redis;

    if (rd == NULL) {
        return;
    }

    ngx_sf_kz = kz;
    rd->data = kz;

    ngx_queue_init(&ngx_sf_retry);

    if (RAND_bytes((u_char *) &ngx_sf_node, sizeof(ngx_sf_node)) != 1) {
        ngx_sf_node = (uint64_t) ngx_random() << 32 ^ ngx_random();
    }
    rd->down_flag = &kz->sh->redis_down;

    ngx_sf_poll_event.handler = ngx_http_smartflow_keys_poll;
    ngx_sf_poll_event.data = &rd->dummy;
    ngx_sf_poll_event.log = cycle->log;
    ngx_sf_poll_event.cancelable = 1;

    /* not cancelable: a worker that exits sends what it gathered */
    ngx_sf_flush_event.handler = ngx_http_smartflow_keys_flush;
    ngx_sf_flush_event.data = &rd->dummy;
    ngx_sf_flush_event.log = cycle->log;

    ngx_smartflow_redis_start(rd, cycle->log);

    ngx_add_timer(&ngx_sf_poll_event, NGX_SMARTFLOW_KEYS_POLL);
}


/* the connection, shared with the other modules (the cache's phase 3) */
ngx_smartflow_redis_t *
ngx_smartflow_redis_shared(void)
{
    return ngx_sf_kz ? ngx_sf_kz->redis : NULL;
}


/*
 * The worker exits.  One told to quit has given back its leases and sent
 * its settlements when it was told (ngx_http_smartflow_keys_quit()), and
 * has waited for their answers: the connection's watchdog is not
 * cancelable, so the worker runs on until they came or its wait was
 * over.  What is left to send here is a terminated worker's (or one
 * whose connection was away when it was told to quit): its leases end,
 * and what it gathered is written without waiting for the answers.  The
 * connection goes before the worker (nginx checks none is left).  The
 * scripts not seen answered (all of them when Redis is away) are kept
 * in the keys zone for the next worker that reaches Redis: the zone
 * outlives the worker and a reload, so nothing is lost when a reload
 * falls in an outage, and they go within the poll period of a worker
 * that runs while the old ones end: their tokens make a script that did
 * run count once.  Those never written to a connection (Redis away)
 * also go to the state file, for a start after a stop: sent then, maybe
 * much later, they count once, as Redis never saw their tokens.  Not the
 * others: one that did run, sent again once its token has expired in
 * Redis (two minutes), would count twice.  Returns how many of those the
 * state file is to keep.
 */
ngx_uint_t
ngx_http_smartflow_keys_redis_exit_process(ngx_cycle_t *cycle)
{
    redisAsyncContext      *ac;
    ngx_smartflow_redis_t  *rd;

    rd = ngx_sf_kz ? ngx_sf_kz->redis : NULL;

    if (rd == NULL) {
        return 0;
    }

    (void) ngx_http_smartflow_keys_leases_end(1);
    ngx_http_smartflow_keys_flush(&ngx_sf_flush_event);

    if (rd->ac) {
        ac = rd->ac;
        rd->writing = 1;
        redisAsyncHandleWrite(ac);
        rd->writing = 0;

        rd->ac = NULL;
        rd->state = NGX_SMARTFLOW_REDIS_DOWN;

        /* every command not answered yet is answered NULL: to retry */
        redisAsyncFree(ac);
    }

    return ngx_http_smartflow_keys_keep(rd);
}


/*
 * The worker is told to quit: its leases end now and what they did not
 * use goes back to Redis with the settlements gathered, on the
 * connection the worker waits on before it exits, so that their outcome
 * is known (those not answered in time are kept in the zone, as the
 * other scripts are).  An exiting worker asks for no lease again.
 */
static void
ngx_http_smartflow_keys_quit(ngx_smartflow_redis_t *rd)
{
    ngx_http_smartflow_keys_flush(&ngx_sf_flush_event);
}


/* 1 when virtual keys are to be refused: fail=closed and Redis away */
ngx_int_t
ngx_http_smartflow_keys_redis_down(ngx_http_smartflow_keys_zone_t *kz)
{
    return kz->redis && kz->redis->fail_closed
           && !ngx_smartflow_redis_up(kz->redis);
}


ngx_int_t
ngx_http_smartflow_keys_redis_unavailable(ngx_http_request_t *r)
{
    return ngx_http_smartflow_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               "api_error", "key_store_unavailable", NULL,
               "The shared key store of this gateway is unreachable; "
               "please retry shortly.");
}


static ngx_http_smartflow_keys_rq_t *
ngx_http_smartflow_keys_rq(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_smartflow_keys_rq_t  *rq;

    if (ctx->keys_redis) {
        return ctx->keys_redis;
    }

    rq = ngx_pcalloc(r->pool, sizeof(ngx_http_smartflow_keys_rq_t));
    if (rq == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_smartflow_keys_rq_cleanup;
    cln->data = rq;

    rq->r = r;
    ctx->keys_redis = rq;

    return rq;
}


static void
ngx_http_smartflow_keys_rq_cleanup(void *data)
{
    ngx_http_smartflow_keys_rq_t *rq = data;

    if (rq->ticket) {
        rq->ticket->rq = NULL;
        rq->ticket = NULL;
    }

    if (rq->queued) {
        ngx_queue_remove(&rq->queue);
        rq->queued = 0;
    }
}


static ngx_http_smartflow_keys_ticket_t *
ngx_http_smartflow_keys_ticket(ngx_http_smartflow_keys_rq_t *rq)
{
    ngx_http_smartflow_keys_ticket_t  *t;

    t = ngx_sf_tickets;

    if (t) {
        ngx_sf_tickets = t->next;

    } else {
        t = ngx_alloc(sizeof(ngx_http_smartflow_keys_ticket_t),
                      rq->r->connection->log);
        if (t == NULL) {
            return NULL;
        }
    }

    t->rq = rq;
    t->id = 0;
    t->want = 0;
    t->only = 0;
    t->token_len = 0;
    rq->ticket = t;

    return t;
}


/* the answer came: the request, if it still exists */
static ngx_http_smartflow_keys_rq_t *
ngx_http_smartflow_keys_punch(ngx_http_smartflow_keys_ticket_t *t)
{
    ngx_http_smartflow_keys_rq_t  *rq;

    rq = t->rq;

    if (rq) {
        rq->ticket = NULL;
        rq->waiting = 0;
    }

    t->next = ngx_sf_tickets;
    ngx_sf_tickets = t;

    return rq;
}


static void
ngx_http_smartflow_keys_wait(ngx_http_request_t *r,
    ngx_http_smartflow_keys_rq_t *rq)
{
    rq->waiting = 1;
    r->main->count++;
}


/* a phase handler called again while its request waits */
ngx_int_t
ngx_http_smartflow_keys_redis_waiting(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_http_smartflow_keys_rq_t  *rq;

    rq = ctx->keys_redis;

    return rq && rq->waiting;
}


/*
 * ACCESS: a key the zone does not know may be new on another node; one
 * pull, then the access handler runs again.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_pull(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    if (ngx_http_smartflow_keys_redis_pull_with(r, ctx,
                                                ngx_http_smartflow_keys_pulled)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    /* the access phase runs again once the records are in */
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_AGAIN;
}


/*
 * The admin API meets an id its zone does not know: the key may be new
 * on another node.  NGX_DONE while the records come (the API runs again),
 * NGX_DECLINED to answer 404 now.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_pull_api(ngx_http_request_t *r)
{
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL
        || ngx_http_smartflow_keys_redis_pull_with(r, ctx,
               ngx_http_smartflow_keys_api_pulled)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_smartflow_keys_redis_pull_with(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_redis_pt handler)
{
    size_t                             len[5];
    ngx_smartflow_redis_t             *rd;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_ticket_t  *t;
    const char                        *argv[5];
    u_char                             ver[NGX_INT_T_LEN];

    rd = ngx_sf_kz ? ngx_sf_kz->redis : NULL;

    if (rd == NULL || !ngx_smartflow_redis_up(rd)) {
        return NGX_DECLINED;
    }

    rq = ngx_http_smartflow_keys_rq(r, ctx);

    if (rq == NULL || rq->pulled) {
        return NGX_DECLINED;
    }

    rq->pulled = 1;

    t = ngx_http_smartflow_keys_ticket(rq);
    if (t == NULL) {
        return NGX_DECLINED;
    }

    argv[3] = (char *) ver;
    len[3] = ngx_sprintf(ver, "%ui", ngx_sf_kz->sh->redis_ver) - ver;
    argv[4] = (char *) ngx_sf_kz->sh->redis_epoch;
    len[4] = ngx_strlen(ngx_sf_kz->sh->redis_epoch);

    if (ngx_smartflow_redis_eval(rd, ngx_sf_scripts[NGX_SF_SCRIPT_PULL],
                                 handler, t, 0, 5, argv, len)
        != NGX_OK)
    {
        (void) ngx_http_smartflow_keys_punch(t);
        return NGX_DECLINED;
    }

    ngx_http_smartflow_keys_wait(r, rq);

    return NGX_OK;
}


static void
ngx_http_smartflow_keys_api_pulled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_smartflow_keys_rq_t  *rq;

    ngx_http_smartflow_keys_apply(rd, reply);

    rq = ngx_http_smartflow_keys_punch(data);

    if (rq == NULL) {
        return;
    }

    /* the counters read before were of a key the zone did not have */
    rq->refreshed = 0;

    r = rq->r;
    c = r->connection;

    ngx_http_finalize_request(r, ngx_http_smartflow_keys_api_rerun(r));
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_smartflow_keys_pulled(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_smartflow_keys_rq_t  *rq;

    ngx_http_smartflow_keys_apply(rd, reply);

    rq = ngx_http_smartflow_keys_punch(data);

    if (rq == NULL) {
        return;
    }

    r = rq->r;
    c = r->connection;

    r->main->count--;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* the records a pull returned go into the zone */
static void
ngx_http_smartflow_keys_apply(ngx_smartflow_redis_t *rd, redisReply *reply)
{
    size_t                           n;
    uint64_t                         when;
    ngx_str_t                        err;
    ngx_uint_t                       i, id, rev, same, applied;
    ngx_pool_t                      *pool;
    redisReply                     **e;
    ngx_smartflow_key_t             *k, saved;
    ngx_smartflow_json_t            *j, *t;
    ngx_smartflow_keys_sh_t         *sh;
    ngx_http_smartflow_keys_zone_t  *kz;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 2 || (reply->elements - 2) % 3
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    kz = rd->data;
    sh = kz->sh;
    e = reply->element;

    if (reply->elements == 2) {
        return;
    }

    pool = ngx_create_pool(4096, rd->log);
    if (pool == NULL) {
        return;
    }

    n = ngx_min(e[1]->len, sizeof(sh->redis_epoch) - 1);
    applied = 0;

    ngx_shmtx_lock(&kz->shpool->mutex);

    same = (ngx_strlen(sh->redis_epoch) == n
            && ngx_strncmp(sh->redis_epoch, e[1]->str, n) == 0);

    for (i = 2; i + 2 < reply->elements; i += 3) {
        saved.node.key = 0;
        id = ngx_http_smartflow_keys_num(e[i]);
        rev = ngx_http_smartflow_keys_num(e[i + 1]);

        if (id == 0 || e[i + 2]->type != REDIS_REPLY_STRING) {
            continue;
        }

        k = ngx_smartflow_keys_by_id(sh, id);

        if (k && same && k->rev >= rev) {
            continue;
        }

        j = ngx_smartflow_json_parse(pool, (u_char *) e[i + 2]->str,
                                     e[i + 2]->len, &err);
        if (j == NULL) {
            continue;
        }

        if (k && k->revoked) {
            /* a revocation is final: no record brings the key back */
            t = ngx_smartflow_json_get(j, "revoked");

            if (t == NULL || t->type != NGX_SMARTFLOW_JSON_NUMBER
                || ngx_smartflow_parse_uint(t->str.data, t->str.len, &when)
                   != NGX_OK
                || when == 0)
            {
                continue;
            }
        }

        if (k) {
            /* the record replaces the key; this zone's counters stay */
            saved = *k;
            ngx_smartflow_keys_free(kz, k);
        }

        if (ngx_smartflow_keys_state_key(kz, pool, j, &err) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "smartflow proxy: the shared key vk_%ui cannot "
                          "be taken in: %V", id, &err);

            k = ngx_smartflow_keys_by_id(sh, id);
            if (k) {
                ngx_smartflow_keys_free(kz, k);
            }

            continue;
        }

        k = ngx_smartflow_keys_by_id(sh, id);

        if (k && saved.node.key == id) {
            ngx_memcpy(&k->period_start, &saved.period_start,
                       sizeof(ngx_smartflow_key_t)
                       - offsetof(ngx_smartflow_key_t, period_start));
        }

        if (k) {
            k->rev = rev;
            k->dirty = 0;
        }

        applied++;
    }

    sh->redis_ver = (ngx_uint_t) e[0]->integer;
    ngx_memcpy(sh->redis_epoch, e[1]->str, n);
    sh->redis_epoch[n] = '\0';

    if (applied) {
        sh->version++;
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    ngx_destroy_pool(pool);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "smartflow proxy keys pulled: %ui changed", applied);
}


static void
ngx_http_smartflow_keys_poll(ngx_event_t *ev)
{
    size_t                  len[5];
    ngx_smartflow_redis_t  *rd;
    const char             *argv[5];
    u_char                  ver[NGX_INT_T_LEN];

    rd = ngx_sf_kz->redis;

    /* read without the mutex: a hint, the absorb looks under it */
    if (ngx_sf_kz->sh->redis_owed && ngx_smartflow_redis_up(rd)) {
        ngx_http_smartflow_keys_take(rd);
        ngx_http_smartflow_keys_absorb(rd, 0);
    }

    if (!ngx_sf_polling && ngx_smartflow_redis_up(rd)) {
        argv[3] = (char *) ver;
        len[3] = ngx_sprintf(ver, "%ui", ngx_sf_kz->sh->redis_ver) - ver;
        argv[4] = (char *) ngx_sf_kz->sh->redis_epoch;
        len[4] = ngx_strlen(ngx_sf_kz->sh->redis_epoch);

        if (ngx_smartflow_redis_eval(rd,
                                     ngx_sf_scripts[NGX_SF_SCRIPT_PULL],
                                     ngx_http_smartflow_keys_polled, NULL,
                                     0, 5, argv, len)
            == NGX_OK)
        {
            ngx_sf_polling = 1;
        }
    }

    if (!ngx_exiting && !ngx_terminate) {
        ngx_add_timer(ev, NGX_SMARTFLOW_KEYS_POLL);
    }
}


static void
ngx_http_smartflow_keys_polled(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    ngx_sf_polling = 0;
    ngx_http_smartflow_keys_apply(rd, reply);
}


/*
 * A script run without a request (settle, cancel, absorb), kept by the
 * worker until Redis has answered it: one that fails waits for the next
 * connection and is sent again.  Its token makes a second run harmless
 * when the first one did reach Redis and only its answer was lost.
 */
static ngx_http_smartflow_keys_op_t *
ngx_http_smartflow_keys_op(ngx_uint_t script, ngx_uint_t id, int nkeys,
    int n, u_char **args, size_t *lens)
{
    int                            i;
    size_t                         size;
    u_char                        *p;
    ngx_http_smartflow_keys_op_t  *op;

    size = sizeof(ngx_http_smartflow_keys_op_t);

    for (i = 0; i < n; i++) {
        size += lens[i];
    }

    op = ngx_alloc(size, ngx_cycle->log);
    if (op == NULL) {
        return NULL;
    }

    op->script = script;
    op->id = id;
    op->nkeys = nkeys;
    op->argc = 3 + n;
    op->tries = 0;
    op->sent = 0;

    p = (u_char *) (op + 1);

    for (i = 0; i < n; i++) {
        op->argv[3 + i] = (char *) p;
        op->len[3 + i] = lens[i];
        p = ngx_cpymem(p, args[i], lens[i]);
    }

    return op;
}


static void
ngx_http_smartflow_keys_op_submit(ngx_http_smartflow_keys_op_t *op)
{
    ngx_smartflow_redis_t  *rd;

    rd = ngx_sf_kz->redis;

    if (ngx_smartflow_redis_eval(rd, ngx_sf_scripts[op->script],
                                 ngx_http_smartflow_keys_op_done, op,
                                 op->nkeys, op->argc, op->argv, op->len)
        != NGX_OK)
    {
        ngx_queue_insert_tail(&ngx_sf_retry, &op->queue);
        return;
    }

    op->sent = 1;
}


static void
ngx_http_smartflow_keys_op_done(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    ngx_http_smartflow_keys_op_t  *op = data;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: redis %V: %*s", &rd->name,
                      (size_t) reply->len, reply->str);
    }

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (++op->tries < 20) {
            ngx_queue_insert_tail(&ngx_sf_retry, &op->queue);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: usage of virtual key vk_%ui could "
                      "not be given to redis", op->id);

    } else if ((op->script == NGX_SF_SCRIPT_SETTLE
                || op->script == NGX_SF_SCRIPT_ABSORB)
               && reply->type == REDIS_REPLY_ARRAY
               && reply->elements == 14)
    {
        ngx_http_smartflow_keys_snapshot(reply, 0, op->id);
    }

    ngx_free(op);
}


/* a token no other request, worker or node has */
static size_t
ngx_http_smartflow_keys_token(u_char *buf)
{
    return ngx_sprintf(buf, "%016xL%P%xi", ngx_sf_node, ngx_pid,
                       ++ngx_sf_serial)
           - buf;
}


/*
 * Redis answers (again): the scripts that waited go first, then what this
 * zone served without Redis goes back, keys Redis lost with it, and the
 * worker pulls.
 */
static void
ngx_http_smartflow_keys_up(ngx_smartflow_redis_t *rd)
{
    ngx_queue_t  *q, waiting;

    ngx_queue_init(&waiting);

    if (!ngx_queue_empty(&ngx_sf_retry)) {
        ngx_queue_add(&waiting, &ngx_sf_retry);
        ngx_queue_init(&ngx_sf_retry);
    }

    while (!ngx_queue_empty(&waiting)) {
        q = ngx_queue_head(&waiting);
        ngx_queue_remove(q);
        ngx_http_smartflow_keys_op_submit(
            ngx_queue_data(q, ngx_http_smartflow_keys_op_t, queue));
    }

    ngx_http_smartflow_keys_take(rd);
    ngx_http_smartflow_keys_absorb(rd, 1);

    /* the records changed elsewhere meanwhile */
    ngx_http_smartflow_keys_poll(&ngx_sf_poll_event);
}


/*
 * What the zone served without Redis goes to Redis, one absorb script a
 * key: every key when this worker finds Redis again (all: with its
 * record, for a Redis that lost it), else only the keys that counted
 * some since: a request admitted from the zone while Redis was away and
 * settled after it came back, or one a worker of this node served
 * before it found Redis again.  The poll sends those within its period,
 * so that the other nodes see that spend now rather than after the next
 * outage.  Each count is taken out of the zone under the mutex as its
 * script is made, so it goes in one script only, and the script's token
 * makes it count once when it is sent again.
 */
static void
ngx_http_smartflow_keys_absorb(ngx_smartflow_redis_t *rd, ngx_uint_t all)
{
    size_t                           size, lens[20];
    ngx_uint_t                       i;
    ngx_pool_t                      *pool;
    ngx_queue_t                     *q, waiting;
    ngx_smartflow_out_t              o;
    ngx_smartflow_key_t             *k;
    ngx_smartflow_keys_sh_t         *sh;
    ngx_http_smartflow_keys_op_t    *op;
    ngx_http_smartflow_keys_zone_t  *kz;
    u_char                          *p, *args[20];
    uint64_t                         v[14];

    kz = rd->data;
    sh = kz->sh;

    ngx_queue_init(&waiting);

    pool = ngx_create_pool(16384, rd->log);
    if (pool == NULL) {
        return;
    }

    ngx_shmtx_lock(&kz->shpool->mutex);

    for (q = ngx_queue_head(&sh->keys);
         q != ngx_queue_sentinel(&sh->keys);
         q = ngx_queue_next(q))
    {
        k = ngx_queue_data(q, ngx_smartflow_key_t, queue);

        if (!all
            && (k->off_requests | k->off_prompt | k->off_completion
                | k->off_spend | k->off_unreserve)
               == 0)
        {
            continue;
        }

        ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
        ngx_smartflow_keys_state_write_key(&o, k);
        size = o.size;

        p = ngx_pnalloc(pool, size + 96 + sizeof(sh->redis_epoch)
                              + 14 * (NGX_INT64_LEN + 1));
        if (p == NULL) {
            sh->redis_owed = 1;
            break;
        }

        args[0] = p;
        lens[0] = ngx_http_smartflow_keys_counters(p, k->node.key);
        p += lens[0];

        args[1] = p;
        p = ngx_sprintf(p, "%ui", (ngx_uint_t) k->node.key);
        lens[1] = p - args[1];

        o.pos = p;
        o.size = 0;
        ngx_smartflow_keys_state_write_key(&o, k);

        args[2] = p;
        lens[2] = o.size;
        p += o.size;

        /* a record changed here while Redis was away goes with the first */
        args[3] = (u_char *) ((all && k->dirty) ? "1" : "0");
        lens[3] = 1;

        /*
         * the view without what was served meanwhile, which travels
         * apart: the zone keeps that view until the script's answer
         * brings Redis's, so that no other worker's absorb, run first
         * in a Redis that lost its data, counts it in its view as well
         */
        k->spent -= ngx_min(k->spent, k->off_spend);
        k->spend -= ngx_min(k->spend, k->off_spend);
        k->period_requests -= ngx_min(k->period_requests, k->off_requests);
        k->requests -= ngx_min(k->requests, k->off_requests);
        k->period_prompt -= ngx_min(k->period_prompt, k->off_prompt);
        k->prompt_tokens -= ngx_min(k->prompt_tokens, k->off_prompt);
        k->period_completion -= ngx_min(k->period_completion,
                                        k->off_completion);
        k->completion_tokens -= ngx_min(k->completion_tokens,
                                        k->off_completion);

        v[0] = (uint64_t) k->period_start;
        v[1] = k->spent;
        v[2] = k->period_requests;
        v[3] = k->period_prompt;
        v[4] = k->period_completion;
        v[5] = k->requests;
        v[6] = k->prompt_tokens;
        v[7] = k->completion_tokens;
        v[8] = k->spend;
        v[9] = k->off_requests;
        v[10] = k->off_prompt;
        v[11] = k->off_completion;
        v[12] = k->off_spend;
        v[13] = k->off_unreserve;

        for (i = 0; i < 14; i++) {
            args[4 + i] = p;
            p = ngx_sprintf(p, "%uL", v[i]);
            lens[4 + i] = p - args[4 + i];
        }

        args[18] = p;
        lens[18] = ngx_http_smartflow_keys_token(p);
        p += lens[18];

        args[19] = p;
        lens[19] = ngx_strlen(sh->redis_epoch);
        p = ngx_cpymem(p, sh->redis_epoch, lens[19]);

        op = ngx_http_smartflow_keys_op(NGX_SF_SCRIPT_ABSORB, k->node.key, 1,
                                        20, args, lens);
        if (op == NULL) {
            sh->redis_owed = 1;
            break;
        }

        k->off_requests = 0;
        k->off_prompt = 0;
        k->off_completion = 0;
        k->off_spend = 0;
        k->off_unreserve = 0;

        if (all) {
            k->dirty = 0;
        }

        ngx_queue_insert_tail(&waiting, &op->queue);
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    ngx_destroy_pool(pool);

    while (!ngx_queue_empty(&waiting)) {
        q = ngx_queue_head(&waiting);
        ngx_queue_remove(q);
        ngx_http_smartflow_keys_op_submit(
            ngx_queue_data(q, ngx_http_smartflow_keys_op_t, queue));
    }
}


/*
 * The scripts of an exiting worker that Redis has not answered go into
 * the zone, for the next worker that reaches Redis.
 */
static ngx_uint_t
ngx_http_smartflow_keys_keep(ngx_smartflow_redis_t *rd)
{
    ngx_uint_t                       kept, lost, unsent;
    ngx_queue_t                     *q;
    ngx_http_smartflow_keys_op_t    *op;
    ngx_http_smartflow_keys_kept_t  *kp;
    ngx_http_smartflow_keys_zone_t  *kz;

    if (ngx_queue_empty(&ngx_sf_retry)) {
        return 0;
    }

    kz = rd->data;
    kept = 0;
    lost = 0;
    unsent = 0;

    ngx_shmtx_lock(&kz->shpool->mutex);

    while (!ngx_queue_empty(&ngx_sf_retry)) {
        q = ngx_queue_head(&ngx_sf_retry);
        ngx_queue_remove(q);

        op = ngx_queue_data(q, ngx_http_smartflow_keys_op_t, queue);

        kp = ngx_http_smartflow_keys_kept(kz, op->script, op->id, op->nkeys,
                                          op->tries, op->sent, op->argc - 3,
                                          (u_char **) &op->argv[3],
                                          &op->len[3]);

        if (kp == NULL) {
            lost++;
            ngx_free(op);
            continue;
        }

        kz->sh->redis_owed = 1;
        kz->sh->version++;
        kept++;

        if (!op->sent) {
            unsent++;
        }

        ngx_free(op);
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (kept) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "smartflow proxy: %ui usage updates of virtual keys "
                      "kept for the next worker that reaches redis %V",
                      kept, &rd->name);
    }

    if (lost) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: %ui usage updates of virtual keys "
                      "could not be kept, the keys zone is full", lost);
    }

    return unsent;
}


/*
 * The record of a script kept in the zone for the next worker that
 * reaches Redis, its arguments after it in the same allocation: an
 * exiting worker's scripts, or those the state file brings back.
 * Called with the zone's mutex held; NULL when the zone is full.
 */
static ngx_http_smartflow_keys_kept_t *
ngx_http_smartflow_keys_kept(ngx_http_smartflow_keys_zone_t *kz,
    ngx_uint_t script, ngx_uint_t id, int nkeys, ngx_uint_t tries,
    ngx_uint_t sent, int n, u_char **args, size_t *lens)
{
    int                              i;
    size_t                           size;
    u_char                          *p;
    ngx_http_smartflow_keys_kept_t  *kp;

    size = sizeof(ngx_http_smartflow_keys_kept_t);

    for (i = 0; i < n; i++) {
        size += lens[i];
    }

    kp = ngx_slab_alloc_locked(kz->shpool, size);
    if (kp == NULL) {
        return NULL;
    }

    kp->script = script;
    kp->id = id;
    kp->tries = tries;
    kp->sent = sent;
    kp->nkeys = nkeys;
    kp->n = n;

    p = (u_char *) (kp + 1);

    for (i = 0; i < n; i++) {
        kp->len[i] = lens[i];
        p = ngx_cpymem(p, args[i], lens[i]);
    }

    ngx_queue_insert_tail(&kz->sh->redis_ops, &kp->queue);

    return kp;
}


/*
 * The scripts workers that exited left in the zone go to Redis, before
 * anything this worker absorbs: the settlements they hold free the
 * reservations they made there.
 */
static void
ngx_http_smartflow_keys_take(ngx_smartflow_redis_t *rd)
{
    int                              i;
    u_char                          *p, *args[21];
    ngx_queue_t                     *q, waiting;
    ngx_smartflow_keys_sh_t         *sh;
    ngx_http_smartflow_keys_op_t    *op;
    ngx_http_smartflow_keys_kept_t  *kp;
    ngx_http_smartflow_keys_zone_t  *kz;

    kz = rd->data;
    sh = kz->sh;

    ngx_queue_init(&waiting);

    ngx_shmtx_lock(&kz->shpool->mutex);

    sh->redis_owed = 0;

    while (!ngx_queue_empty(&sh->redis_ops)) {
        q = ngx_queue_head(&sh->redis_ops);
        kp = ngx_queue_data(q, ngx_http_smartflow_keys_kept_t, queue);

        p = (u_char *) (kp + 1);

        for (i = 0; i < kp->n; i++) {
            args[i] = p;
            p += kp->len[i];
        }

        op = ngx_http_smartflow_keys_op(kp->script, kp->id, kp->nkeys, kp->n,
                                        args, kp->len);
        if (op == NULL) {
            sh->redis_owed = 1;
            break;
        }

        op->tries = kp->tries;
        op->sent = kp->sent;

        ngx_queue_remove(q);
        ngx_slab_free_locked(kz->shpool, kp);

        /* the state file no longer keeps it */
        sh->version++;

        ngx_queue_insert_tail(&waiting, &op->queue);
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    while (!ngx_queue_empty(&waiting)) {
        q = ngx_queue_head(&waiting);
        ngx_queue_remove(q);
        ngx_http_smartflow_keys_op_submit(
            ngx_queue_data(q, ngx_http_smartflow_keys_op_t, queue));
    }
}


/*
 * The state file's "redis_epoch": the Redis the zone's counters are a
 * view of, so that after a start the absorb scripts know whether Redis
 * kept its data (else the first ones rebuild from the larger view, which
 * counts twice what settlements still on their way also bring).  Its
 * "redis_apart": what each key served without Redis and Redis has not
 * had yet, {"id":ID,"requests":N,"prompt":N,"completion":N,"spend":N}.
 * And its "redis_unsent": the scripts kept in the zone that no
 * connection ever took, {"script":NAME,"id":ID,"keys":N,"tries":N,
 * "args":[...]} each.  Both written only when there are some.  Called
 * with the zone's mutex held.
 */
void
ngx_http_smartflow_keys_redis_state_write(ngx_smartflow_out_t *o,
    ngx_smartflow_keys_sh_t *sh)
{
    int                              i;
    u_char                          *p;
    ngx_str_t                        s;
    ngx_uint_t                       n;
    ngx_queue_t                     *q;
    ngx_smartflow_key_t             *k;
    ngx_http_smartflow_keys_kept_t  *kp;

    s.data = sh->redis_epoch;
    s.len = ngx_strlen(sh->redis_epoch);

    if (s.len) {
        ngx_sf_out_lit(o, ",\"redis_epoch\":");
        ngx_smartflow_out_str(o, &s);
    }

    n = 0;

    for (q = ngx_queue_head(&sh->keys);
         q != ngx_queue_sentinel(&sh->keys);
         q = ngx_queue_next(q))
    {
        k = ngx_queue_data(q, ngx_smartflow_key_t, queue);

        if ((k->off_requests | k->off_prompt | k->off_completion
             | k->off_spend)
            == 0)
        {
            continue;
        }

        if (n++ == 0) {
            ngx_sf_out_lit(o, ",\"redis_apart\":[\n");

        } else {
            ngx_sf_out_lit(o, ",\n");
        }

        ngx_sf_out_lit(o, "{\"id\":");
        ngx_smartflow_out_uint(o, k->node.key);
        ngx_sf_out_lit(o, ",\"requests\":");
        ngx_smartflow_out_uint(o, k->off_requests);
        ngx_sf_out_lit(o, ",\"prompt\":");
        ngx_smartflow_out_uint(o, k->off_prompt);
        ngx_sf_out_lit(o, ",\"completion\":");
        ngx_smartflow_out_uint(o, k->off_completion);
        ngx_sf_out_lit(o, ",\"spend\":");
        ngx_smartflow_out_uint(o, k->off_spend);
        ngx_sf_out_lit(o, "}");
    }

    if (n) {
        ngx_sf_out_lit(o, "\n]");
    }

    n = 0;

    for (q = ngx_queue_head(&sh->redis_ops);
         q != ngx_queue_sentinel(&sh->redis_ops);
         q = ngx_queue_next(q))
    {
        kp = ngx_queue_data(q, ngx_http_smartflow_keys_kept_t, queue);

        if (kp->sent) {
            continue;
        }

        if (n++ == 0) {
            ngx_sf_out_lit(o, ",\"redis_unsent\":[\n");

        } else {
            ngx_sf_out_lit(o, ",\n");
        }

        ngx_sf_out_lit(o, "{\"script\":\"");
        ngx_smartflow_out_raw(o, (u_char *) ngx_sf_script_names[kp->script],
                              ngx_strlen(ngx_sf_script_names[kp->script]));
        ngx_sf_out_lit(o, "\",\"id\":");
        ngx_smartflow_out_uint(o, kp->id);
        ngx_sf_out_lit(o, ",\"keys\":");
        ngx_smartflow_out_uint(o, kp->nkeys);
        ngx_sf_out_lit(o, ",\"tries\":");
        ngx_smartflow_out_uint(o, kp->tries);
        ngx_sf_out_lit(o, ",\"args\":[");

        p = (u_char *) (kp + 1);

        for (i = 0; i < kp->n; i++) {
            if (i) {
                ngx_sf_out_lit(o, ",");
            }

            s.data = p;
            s.len = kp->len[i];
            ngx_smartflow_out_str(o, &s);

            p += kp->len[i];
        }

        ngx_sf_out_lit(o, "]}");
    }

    if (n) {
        ngx_sf_out_lit(o, "\n]");
    }
}


/*
 * A start reads them back into the zone, the scripts for the first
 * worker that reaches Redis.  Called with the zone's mutex held.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_state_load(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_json_t *root, ngx_str_t *err)
{
    int                              n;
    size_t                           lens[21];
    u_char                          *args[21];
    uint64_t                         id, nkeys, tries, v[4];
    ngx_uint_t                       script, count;
    ngx_smartflow_key_t             *k;
    ngx_smartflow_json_t            *j, *f, *a;

    static char  *apart[] = { "id", "requests", "prompt", "completion",
                              "spend" };

    j = ngx_smartflow_json_get(root, "redis_epoch");

    if (j) {
        if (j->type != NGX_SMARTFLOW_JSON_STRING
            || j->str.len >= sizeof(kz->sh->redis_epoch))
        {
            ngx_str_set(err, "bad \"redis_epoch\"");
            return NGX_ERROR;
        }

        ngx_memcpy(kz->sh->redis_epoch, j->str.data, j->str.len);
        kz->sh->redis_epoch[j->str.len] = '\0';
    }

    j = ngx_smartflow_json_get(root, "redis_apart");

    if (j) {
        ngx_str_set(err, "bad \"redis_apart\"");

        if (j->type != NGX_SMARTFLOW_JSON_ARRAY) {
            return NGX_ERROR;
        }

        for (j = j->child; j; j = j->next) {

            if (j->type != NGX_SMARTFLOW_JSON_OBJECT) {
                return NGX_ERROR;
            }

            for (n = 0; n < 5; n++) {
                f = ngx_smartflow_json_get_n(j, apart[n],
                                             ngx_strlen(apart[n]));

                if (f == NULL || f->type != NGX_SMARTFLOW_JSON_NUMBER
                    || ngx_smartflow_parse_uint(f->str.data, f->str.len,
                                                n ? &v[n - 1] : &id)
                       != NGX_OK)
                {
                    return NGX_ERROR;
                }
            }

            k = ngx_smartflow_keys_by_id(kz->sh, (ngx_uint_t) id);

            if (k == NULL) {
                return NGX_ERROR;
            }

            k->off_requests = v[0];
            k->off_prompt = v[1];
            k->off_completion = v[2];
            k->off_spend = v[3];
            kz->sh->redis_owed = 1;
        }
    }

    j = ngx_smartflow_json_get(root, "redis_unsent");

    if (j == NULL) {
        return NGX_OK;
    }

    ngx_str_set(err, "bad \"redis_unsent\"");

    if (j->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return NGX_ERROR;
    }

    count = 0;

    for (j = j->child; j; j = j->next) {

        if (j->type != NGX_SMARTFLOW_JSON_OBJECT) {
            return NGX_ERROR;
        }

        f = ngx_smartflow_json_get(j, "script");

        if (f == NULL || f->type != NGX_SMARTFLOW_JSON_STRING) {
            return NGX_ERROR;
        }

        for (script = 0; script < NGX_SF_SCRIPT_MAX; script++) {
            if (f->str.len == ngx_strlen(ngx_sf_script_names[script])
                && ngx_strncmp(f->str.data, ngx_sf_script_names[script],
                               f->str.len)
                   == 0)
            {
                break;
            }
        }

        if (script != NGX_SF_SCRIPT_SETTLE
            && script != NGX_SF_SCRIPT_ABSORB
            && script != NGX_SF_SCRIPT_CANCEL)
        {
            return NGX_ERROR;
        }

        f = ngx_smartflow_json_get(j, "id");
        if (f == NULL || f->type != NGX_SMARTFLOW_JSON_NUMBER
            || ngx_smartflow_parse_uint(f->str.data, f->str.len, &id)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        f = ngx_smartflow_json_get(j, "keys");
        if (f == NULL || f->type != NGX_SMARTFLOW_JSON_NUMBER
            || ngx_smartflow_parse_uint(f->str.data, f->str.len, &nkeys)
               != NGX_OK
            || nkeys > 1)
        {
            return NGX_ERROR;
        }

        f = ngx_smartflow_json_get(j, "tries");
        if (f == NULL || f->type != NGX_SMARTFLOW_JSON_NUMBER
            || ngx_smartflow_parse_uint(f->str.data, f->str.len, &tries)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        a = ngx_smartflow_json_get(j, "args");
        if (a == NULL || a->type != NGX_SMARTFLOW_JSON_ARRAY
            || a->nchild == 0 || a->nchild > 21)
        {
            return NGX_ERROR;
        }

        n = 0;

        for (f = a->child; f; f = f->next) {
            if (f->type != NGX_SMARTFLOW_JSON_STRING) {
                return NGX_ERROR;
            }

            args[n] = f->str.data;
            lens[n++] = f->str.len;
        }

        /* never sent: the state file keeps no other */
        if (ngx_http_smartflow_keys_kept(kz, script, (ngx_uint_t) id,
                                         (int) nkeys, (ngx_uint_t) tries, 0,
                                         n, args, lens)
            == NULL)
        {
            ngx_str_set(err, "no room for \"redis_unsent\" in the zone");
            return NGX_ERROR;
        }

        count++;
    }

    if (count) {
        kz->sh->redis_owed = 1;
    }

    return NGX_OK;
}


/*
 * The pipeline stage: the reservation is made in Redis.  NGX_AGAIN while
 * it waits (the stage runs again with *v set), NGX_DECLINED when Redis is
 * away (the stage decides locally), NGX_OK with *v when decided.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_reserve(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_keys_verdict_t **v)
{
    size_t                             len[13];
    u_char                            *p;
    uint64_t                           want;
    ngx_uint_t                         i, period;
    ngx_smartflow_key_t               *k;
    ngx_smartflow_redis_t             *rd;
    ngx_http_smartflow_vkey_t         *vkey;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_lease_t   *l;
    ngx_http_smartflow_keys_ticket_t  *t;
    const char                        *argv[13];
    uint64_t                           n[7];
    u_char                             buf[32 + 7 * (NGX_INT64_LEN + 1)];

    rd = ngx_sf_kz ? ngx_sf_kz->redis : NULL;
    vkey = ctx->vkey;

    rq = ngx_http_smartflow_keys_rq(r, ctx);
    if (rq == NULL) {
        return NGX_DECLINED;
    }

    if (rq->verdict.done) {
        if (rq->verdict.done == NGX_SMARTFLOW_VERDICT_FAILED) {
            return NGX_DECLINED;
        }

        *v = &rq->verdict;
        return NGX_OK;
    }

    if (rd == NULL || !ngx_smartflow_redis_up(rd)) {
        return NGX_DECLINED;
    }

    /* a busy key: what this worker holds in Redis already may do */
    l = ngx_http_smartflow_keys_lease(vkey->id, 1);

    if (l && ngx_http_smartflow_keys_lease_take(l, vkey) == NGX_OK) {
        rq->verdict.done = NGX_SMARTFLOW_VERDICT_OK;
        rq->in_redis = 1;
        rq->leased = 1;
        vkey->reserved = 1;

        /* half of it gone: the next one is asked for ahead */
        if (!l->pending
            && (l->used_requests * 2 >= l->requests
                || (ngx_msec_int_t) (l->until - ngx_current_msec) * 2
                   < NGX_SMARTFLOW_KEYS_LEASE))
        {
            ngx_http_smartflow_keys_lease_ask(rd, l, vkey);
        }

        *v = &rq->verdict;
        return NGX_OK;
    }

    if (l && l->pending && !l->starved) {
        /* a lease is on its way: one round trip less for this request */
        ngx_queue_insert_tail(&l->waiters, &rq->queue);
        rq->queued = 1;

        ngx_http_smartflow_keys_wait(r, rq);

        return NGX_AGAIN;
    }

    period = NGX_SMARTFLOW_PERIOD_TOTAL;

    ngx_shmtx_lock(&ngx_sf_kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(ngx_sf_kz->sh, vkey->id);
    if (k) {
        period = k->period;
    }

    ngx_shmtx_unlock(&ngx_sf_kz->shpool->mutex);

    vkey->period_start = ngx_smartflow_keys_period_start(period, ngx_time());

    /* a lease for as many requests as came in the last lease time */
    want = 0;

    if (l && !l->pending && !ngx_exiting) {
        want = ngx_max(l->count, l->last);
        want = (want < 2) ? 0 : ngx_min(want, NGX_SMARTFLOW_KEYS_LEASE_MAX);
    }

    n[0] = vkey->rpm;
    n[1] = vkey->tpm;
    n[2] = vkey->budget;
    n[3] = vkey->est_tokens;
    n[4] = vkey->est_cost;
    n[5] = (uint64_t) vkey->period_start;
    n[6] = want;

    p = buf;
    argv[3] = (char *) p;
    len[3] = ngx_http_smartflow_keys_counters(p, vkey->id);
    p += len[3];

    for (i = 0; i < 7; i++) {
        argv[4 + i] = (char *) p;

        if (i < 3 && n[i] == NGX_HTTP_SMARTFLOW_UNLIMITED) {
            p = ngx_cpymem(p, "-1", 2);

        } else {
            p = ngx_sprintf(p, "%uL", n[i]);
        }

        len[4 + i] = p - (u_char *) argv[4 + i];
    }

    /* the token goes between the period start and the lease */
    argv[11] = argv[10];
    len[11] = len[10];

    rq->token_len = ngx_http_smartflow_keys_token(rq->token);
    argv[10] = (char *) rq->token;
    len[10] = rq->token_len;

    argv[12] = "0";
    len[12] = 1;

    t = ngx_http_smartflow_keys_ticket(rq);
    if (t == NULL) {
        return NGX_DECLINED;
    }

    ngx_memcpy(t->token, rq->token, rq->token_len);
    t->token_len = rq->token_len;
    t->id = vkey->id;
    t->period = period;
    t->period_start = vkey->period_start;
    t->est_tokens = vkey->est_tokens;
    t->est_cost = vkey->est_cost;
    t->want = want;

    if (ngx_smartflow_redis_eval(rd, ngx_sf_scripts[NGX_SF_SCRIPT_RESERVE],
                                 ngx_http_smartflow_keys_reserved, t, 1, 13,
                                 argv, len)
        != NGX_OK)
    {
        (void) ngx_http_smartflow_keys_punch(t);
        return NGX_DECLINED;
    }

    if (want) {
        l->pending = 1;
    }

    ngx_http_smartflow_keys_wait(r, rq);

    return NGX_AGAIN;
}


static void
ngx_http_smartflow_keys_reserved(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    size_t                             lens[2];
    u_char                            *args[2];
    uint64_t                           verdict, reset, used, tokens, n;
    ngx_connection_t                  *c;
    ngx_http_smartflow_keys_op_t      *op;
    u_char                             counters[32];
    ngx_http_request_t                *r;
    ngx_http_smartflow_ctx_t          *ctx;
    ngx_http_smartflow_vkey_t         *vkey, gone;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_lease_t   *l;
    ngx_http_smartflow_keys_ticket_t  *t, ticket;
    ngx_http_smartflow_keys_settle_t  *st;

    t = data;
    ticket = *t;

    rq = ngx_http_smartflow_keys_punch(t);

    ctx = rq ? ngx_http_smartflow_get_ctx(rq->r) : NULL;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: redis %V: %*s", &rd->name,
                      (size_t) reply->len, reply->str);
    }

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 10) {
        ngx_http_smartflow_keys_window_snapshot(reply, ticket.id);

    } else {
        reply = NULL;
    }

    n = 0;

    if (reply && ngx_http_smartflow_keys_num(reply->element[0]) == 0) {
        n = ngx_http_smartflow_keys_num(reply->element[9]);
    }

    if (n) {
        /* units like the request that asked */
        ngx_memzero(&gone, sizeof(ngx_http_smartflow_vkey_t));
        gone.window = ngx_http_smartflow_keys_num(reply->element[2]);
        gone.period_start = ticket.period_start;
        gone.est_tokens = ticket.est_tokens;
        gone.est_cost = ticket.est_cost;

        ngx_http_smartflow_keys_lease_grant(ticket.id, ticket.period, &gone,
            n, ngx_http_smartflow_keys_num(reply->element[1]),
            ngx_http_smartflow_keys_num(reply->element[3]),
            ngx_http_smartflow_keys_num(reply->element[4]));
    }

    if (ticket.want) {
        l = ngx_http_smartflow_keys_lease(ticket.id, 0);

        if (l) {
            l->pending = 0;
            l->starved = (n == 0);
            ngx_http_smartflow_keys_lease_wake(l);
        }
    }

    if (rq == NULL) {
        if (reply == NULL) {
            if (ticket.token_len == 0) {
                return;
            }

            /* Redis may have made the reservation: it is undone there */
            args[0] = counters;
            lens[0] = ngx_http_smartflow_keys_counters(counters, ticket.id);
            args[1] = ticket.token;
            lens[1] = ticket.token_len;

            op = ngx_http_smartflow_keys_op(NGX_SF_SCRIPT_CANCEL, ticket.id,
                                            1, 2, args, lens);
            if (op) {
                ngx_http_smartflow_keys_op_submit(op);
            }

            return;
        }

        if (ngx_http_smartflow_keys_num(reply->element[0]) || ticket.only) {
            return;
        }

        /* admitted for a request that is gone: given back */
        st = ngx_http_smartflow_keys_settle_at(ticket.id,
                 ngx_http_smartflow_keys_num(reply->element[2]),
                 ticket.period_start,
                 ngx_smartflow_keys_period_start(ticket.period, ngx_time()));
        st->est_tokens += ticket.est_tokens;
        st->est_cost += ticket.est_cost;

        if (!ngx_sf_flush_event.timer_set) {
            ngx_add_timer(&ngx_sf_flush_event, NGX_SMARTFLOW_KEYS_GATHER);
        }

        return;
    }

    r = rq->r;
    c = r->connection;
    vkey = ctx->vkey;

    if (reply == NULL) {
        /* Redis may have made the reservation: it is undone there */
        rq->verdict.done = NGX_SMARTFLOW_VERDICT_FAILED;

        args[0] = counters;
        lens[0] = ngx_http_smartflow_keys_counters(counters, vkey->id);
        args[1] = rq->token;
        lens[1] = rq->token_len;

        op = ngx_http_smartflow_keys_op(NGX_SF_SCRIPT_CANCEL, vkey->id, 1,
                                        2, args, lens);
        if (op) {
            ngx_http_smartflow_keys_op_submit(op);
        }

    } else {
        verdict = ngx_http_smartflow_keys_num(reply->element[0]);
        reset = ngx_http_smartflow_keys_num(reply->element[1]);
        used = ngx_http_smartflow_keys_num(reply->element[3]);
        tokens = ngx_http_smartflow_keys_num(reply->element[4]);

        vkey->window = ngx_http_smartflow_keys_num(reply->element[2]);
        vkey->reset = (ngx_msec_t) ngx_min(reset, NGX_SMARTFLOW_KEY_WINDOW);
        vkey->requests_left = (vkey->rpm > used) ? vkey->rpm - used : 0;
        vkey->tokens_left = (vkey->tpm > tokens) ? vkey->tpm - tokens : 0;

        rq->verdict.spent = ngx_http_smartflow_keys_num(reply->element[5]);
        rq->verdict.left = ngx_http_smartflow_keys_num(reply->element[6]);
        rq->verdict.left = (rq->verdict.spent + rq->verdict.left
                            < vkey->budget)
                           ? vkey->budget - rq->verdict.spent
                             - rq->verdict.left
                           : 0;

        switch (verdict) {

        case 0:
            rq->verdict.done = NGX_SMARTFLOW_VERDICT_OK;
            rq->in_redis = 1;
            vkey->reserved = 1;
            break;

        case 1:
            rq->verdict.done = NGX_SMARTFLOW_VERDICT_RPM;
            rq->verdict.used = used;
            break;

        case 2:
            rq->verdict.done = NGX_SMARTFLOW_VERDICT_TPM;
            rq->verdict.used = tokens;
            break;

        default:
            rq->verdict.done = NGX_SMARTFLOW_VERDICT_BUDGET;
            break;
        }
    }

    r->main->count--;

    /* the keys stage runs again and finds its verdict */
    ctx->stage--;
    ngx_http_smartflow_pipeline_resume(r);
    ngx_http_run_posted_requests(c);
}


/*
 * LOG phase: the usage of a request reserved in Redis goes there, now or
 * when Redis answers again; the zone counts it meanwhile, for a node that
 * serves without Redis.  Settlements are gathered per key for a few
 * milliseconds and go as one script: the reservations stay in Redis
 * until then, so the gathering never lets a budget be overspent.
 * NGX_DECLINED when the request was not reserved in Redis: the zone
 * settles it.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_settle(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, uint64_t prompt, uint64_t completion,
    uint64_t cost)
{
    time_t                             now_ps;
    ngx_smartflow_key_t               *k;
    ngx_http_smartflow_vkey_t         *vkey;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_settle_t  *st;

    rq = ctx->keys_redis;

    if (rq == NULL || !rq->in_redis) {
        return NGX_DECLINED;
    }

    vkey = ctx->vkey;
    now_ps = vkey->period_start;

    ngx_shmtx_lock(&ngx_sf_kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(ngx_sf_kz->sh, vkey->id);
    if (k) {
        now_ps = ngx_smartflow_keys_period_start(k->period, ngx_time());
    }

    if (k && !ngx_smartflow_redis_up(ngx_sf_kz->redis)) {
        /* the zone enforces alone until Redis answers: it must know */
        k->spent += cost;
        k->spend += cost;
        k->period_prompt += prompt;
        k->period_completion += completion;
        k->prompt_tokens += prompt;
        k->completion_tokens += completion;
        ngx_sf_kz->sh->version++;
    }

    ngx_shmtx_unlock(&ngx_sf_kz->shpool->mutex);

    st = ngx_http_smartflow_keys_settle_at(vkey->id, vkey->window,
                                           vkey->period_start, now_ps);

    st->est_tokens += vkey->est_tokens;
    st->est_cost += vkey->est_cost;
    st->prompt += prompt;
    st->completion += completion;
    st->cost += cost;

    if (rq->leased) {
        st->leased++;
    }

    if (!ngx_sf_flush_event.timer_set) {
        ngx_add_timer(&ngx_sf_flush_event, NGX_SMARTFLOW_KEYS_GATHER);
    }

    return NGX_OK;
}


/* the settlement gathered for a key, window and period */
static ngx_http_smartflow_keys_settle_t *
ngx_http_smartflow_keys_settle_at(ngx_uint_t id, uint64_t window,
    time_t period_start, time_t period_now)
{
    ngx_uint_t                         i;
    ngx_http_smartflow_keys_settle_t  *st;

    for (i = 0; i < ngx_sf_nsettles; i++) {
        st = &ngx_sf_settles[i];

        if (st->id == id && st->window == window
            && st->period_start == period_start
            && st->period_now == period_now)
        {
            return st;
        }
    }

    if (ngx_sf_nsettles == NGX_SMARTFLOW_KEYS_SETTLES) {
        ngx_http_smartflow_keys_send_settles();
    }

    st = &ngx_sf_settles[ngx_sf_nsettles++];
    ngx_memzero(st, sizeof(ngx_http_smartflow_keys_settle_t));

    st->id = id;
    st->window = window;
    st->period_start = period_start;
    st->period_now = period_now;

    return st;
}


/*
 * The worker's lease slot of a key, found, or made (create) with the
 * request counted in its demand.  A slot whose lease is over and whose
 * grant is not awaited can be taken by another key.
 */
static ngx_http_smartflow_keys_lease_t *
ngx_http_smartflow_keys_lease(ngx_uint_t id, ngx_uint_t create)
{
    ngx_uint_t                        i;
    ngx_msec_t                        now;
    ngx_http_smartflow_keys_lease_t  *l, *spare;

    now = ngx_current_msec;
    spare = NULL;

    for (i = 0; i < NGX_SMARTFLOW_KEYS_LEASES; i++) {
        l = &ngx_sf_leases[i];

        if (l->id == id) {
            goto found;
        }

        if (spare == NULL && !l->pending && l->requests == 0
            && (l->id == 0 || now - l->slot >= 2 * NGX_SMARTFLOW_KEYS_LEASE))
        {
            spare = l;
        }
    }

    if (!create || spare == NULL) {
        return NULL;
    }

    l = spare;
    ngx_memzero(l, sizeof(ngx_http_smartflow_keys_lease_t));
    ngx_queue_init(&l->waiters);
    l->id = id;
    l->slot = now;

found:

    if (create) {
        if (now - l->slot >= NGX_SMARTFLOW_KEYS_LEASE) {
            l->last = (now - l->slot < 2 * NGX_SMARTFLOW_KEYS_LEASE)
                      ? l->count : 0;
            l->count = 0;
            l->slot = now;
        }

        l->count++;
    }

    return l;
}


/* a request served from the lease, when it has room for its estimate */
static ngx_int_t
ngx_http_smartflow_keys_lease_take(ngx_http_smartflow_keys_lease_t *l,
    ngx_http_smartflow_vkey_t *vkey)
{
    uint64_t    used;
    ngx_msec_t  now;

    now = ngx_current_msec;

    if (l->requests == 0
        || (ngx_msec_int_t) (l->until - now) <= 0
        || l->used_requests >= l->requests
        || l->used_tokens + vkey->est_tokens > l->tokens
        || l->used_cost + vkey->est_cost > l->cost
        || ngx_smartflow_keys_period_start(l->period, ngx_time())
           != l->period_start)
    {
        return NGX_DECLINED;
    }

    l->used_requests++;
    l->used_tokens += vkey->est_tokens;
    l->used_cost += vkey->est_cost;

    vkey->window = l->window;
    vkey->period_start = l->period_start;
    vkey->reset = l->window_end - now;

    used = l->base_requests + l->used_requests;
    vkey->requests_left = (vkey->rpm > used) ? vkey->rpm - used : 0;

    used = l->base_tokens + l->used_tokens;
    vkey->tokens_left = (vkey->tpm > used) ? vkey->tpm - used : 0;

    return NGX_OK;
}


/*
 * The next lease asked for before this one runs out, without a request
 * waiting for it: units like the request at hand.
 */
static void
ngx_http_smartflow_keys_lease_ask(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_keys_lease_t *l, ngx_http_smartflow_vkey_t *vkey)
{
    size_t                             len[13];
    u_char                            *p;
    uint64_t                           want;
    ngx_uint_t                         i;
    ngx_http_smartflow_keys_ticket_t  *t;
    const char                        *argv[13];
    uint64_t                           n[7];
    u_char                             buf[32 + 7 * (NGX_INT64_LEN + 1)];

    want = ngx_max(l->count, l->last);
    want = ngx_min(want, NGX_SMARTFLOW_KEYS_LEASE_MAX);

    if (want < 2 || ngx_exiting) {
        return;
    }

    t = ngx_sf_tickets;

    if (t) {
        ngx_sf_tickets = t->next;

    } else {
        t = ngx_alloc(sizeof(ngx_http_smartflow_keys_ticket_t), rd->log);
        if (t == NULL) {
            return;
        }
    }

    t->rq = NULL;
    t->id = l->id;
    t->period = l->period;
    t->period_start = l->period_start;
    t->est_tokens = vkey->est_tokens;
    t->est_cost = vkey->est_cost;
    t->want = want;
    t->only = 1;
    t->token_len = ngx_http_smartflow_keys_token(t->token);

    n[0] = vkey->rpm;
    n[1] = vkey->tpm;
    n[2] = vkey->budget;
    n[3] = vkey->est_tokens;
    n[4] = vkey->est_cost;
    n[5] = (uint64_t) l->period_start;
    n[6] = want;

    p = buf;
    argv[3] = (char *) p;
    len[3] = ngx_http_smartflow_keys_counters(p, l->id);
    p += len[3];

    for (i = 0; i < 7; i++) {
        argv[i < 6 ? 4 + i : 11] = (char *) p;

        if (i < 3 && n[i] == NGX_HTTP_SMARTFLOW_UNLIMITED) {
            p = ngx_cpymem(p, "-1", 2);

        } else {
            p = ngx_sprintf(p, "%uL", n[i]);
        }

        len[i < 6 ? 4 + i : 11] = p - (u_char *) argv[i < 6 ? 4 + i : 11];
    }

    argv[10] = (char *) t->token;
    len[10] = t->token_len;
    argv[12] = "1";
    len[12] = 1;

    if (ngx_smartflow_redis_eval(rd, ngx_sf_scripts[NGX_SF_SCRIPT_RESERVE],
                                 ngx_http_smartflow_keys_reserved, t, 1, 13,
                                 argv, len)
        != NGX_OK)
    {
        t->next = ngx_sf_tickets;
        ngx_sf_tickets = t;
        return;
    }

    l->pending = 1;
}


/*
 * Redis leased n more requests like this one: the lease lasts until the
 * window ends or for NGX_SMARTFLOW_KEYS_LEASE ms.  used and tokens are
 * the window's after the grant, the lease in them.
 */
static void
ngx_http_smartflow_keys_lease_grant(ngx_uint_t id, ngx_uint_t period,
    ngx_http_smartflow_vkey_t *vkey, uint64_t n, uint64_t reset,
    uint64_t used, uint64_t tokens)
{
    ngx_msec_t                         now, last;
    ngx_http_smartflow_keys_lease_t   *l, spare;

    now = ngx_current_msec;
    reset = ngx_min(reset, NGX_SMARTFLOW_KEY_WINDOW);
    last = (ngx_msec_t) ngx_min(reset, NGX_SMARTFLOW_KEYS_LEASE);

    l = ngx_http_smartflow_keys_lease(id, 0);

    if (l == NULL) {
        /* no slot for it: given back at once */
        ngx_memzero(&spare, sizeof(ngx_http_smartflow_keys_lease_t));
        l = &spare;
        l->id = id;
        last = 0;
    }

    /* a grant for the same window and period adds to the running lease */
    if (l->requests
        && (l->window != vkey->window || l->period_start != vkey->period_start
            || l->period != period))
    {
        ngx_http_smartflow_keys_lease_end(l);
    }

    l->period = period;

    l->requests += n;
    l->tokens += n * vkey->est_tokens;
    l->cost += n * vkey->est_cost;
    l->window = vkey->window;
    l->period_start = vkey->period_start;
    l->until = now + last;
    l->window_end = now + (ngx_msec_t) reset;

    /* what the window holds without what the lease has not used */
    l->base_requests = used - ngx_min(used, l->requests);
    l->base_tokens = tokens - ngx_min(tokens, l->tokens);

    if (l == &spare) {
        ngx_http_smartflow_keys_lease_end(l);
        last = NGX_SMARTFLOW_KEYS_GATHER;
    }

    if (!ngx_sf_flush_event.timer_set) {
        ngx_add_timer(&ngx_sf_flush_event, ngx_max(last, 1));
    }
}


/*
 * The requests that waited for a grant run their stage again: from the
 * lease if it came and has room, else each with its own reservation.
 * Those that wait again join the lease's next queue, not this one.
 */
static void
ngx_http_smartflow_keys_lease_wake(ngx_http_smartflow_keys_lease_t *l)
{
    ngx_queue_t                    *q, waiters;
    ngx_connection_t               *c;
    ngx_http_request_t             *r;
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_keys_rq_t   *rq;

    if (ngx_queue_empty(&l->waiters)) {
        return;
    }

    ngx_queue_init(&waiters);
    ngx_queue_add(&waiters, &l->waiters);
    ngx_queue_init(&l->waiters);

    while (!ngx_queue_empty(&waiters)) {
        q = ngx_queue_head(&waiters);
        ngx_queue_remove(q);

        rq = ngx_queue_data(q, ngx_http_smartflow_keys_rq_t, queue);
        rq->queued = 0;
        rq->waiting = 0;

        r = rq->r;
        c = r->connection;
        ctx = ngx_http_smartflow_get_ctx(r);

        r->main->count--;

        ctx->stage--;
        ngx_http_smartflow_pipeline_resume(r);
        ngx_http_run_posted_requests(c);
    }
}


/* what a lease did not use goes back to Redis with the settlements */
static void
ngx_http_smartflow_keys_lease_end(ngx_http_smartflow_keys_lease_t *l)
{
    ngx_http_smartflow_keys_settle_t  *st;

    if (l->requests == 0) {
        return;
    }

    st = ngx_http_smartflow_keys_settle_at(l->id, l->window,
             l->period_start,
             ngx_smartflow_keys_period_start(l->period, ngx_time()));

    st->est_tokens += l->tokens - ngx_min(l->tokens, l->used_tokens);
    st->est_cost += l->cost - ngx_min(l->cost, l->used_cost);
    st->unused += l->requests - ngx_min(l->requests, l->used_requests);

    l->requests = 0;
    l->tokens = 0;
    l->cost = 0;
    l->used_requests = 0;
    l->used_tokens = 0;
    l->used_cost = 0;
}


/* ends the leases that are over (all of them when the worker exits) */
static ngx_msec_t
ngx_http_smartflow_keys_leases_end(ngx_uint_t all)
{
    ngx_uint_t                        i;
    ngx_msec_t                        now, next;
    ngx_msec_int_t                    left;
    ngx_http_smartflow_keys_lease_t  *l;

    now = ngx_current_msec;
    next = 0;

    for (i = 0; i < NGX_SMARTFLOW_KEYS_LEASES; i++) {
        l = &ngx_sf_leases[i];

        if (l->requests == 0) {
            continue;
        }

        left = (ngx_msec_int_t) (l->until - now);

        if (all || left <= 0) {
            ngx_http_smartflow_keys_lease_end(l);
            continue;
        }

        if (next == 0 || (ngx_msec_t) left < next) {
            next = (ngx_msec_t) left;
        }
    }

    return next;
}


/*
 * The gathered settlements and the leases that are over go to Redis; the
 * timer comes back for the leases still running (not when the worker
 * exits: then every lease ends).
 */
static void
ngx_http_smartflow_keys_flush(ngx_event_t *ev)
{
    ngx_msec_t  next;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    next = ngx_http_smartflow_keys_leases_end(ngx_exiting || ngx_terminate
                                              || ngx_quit);

    ngx_http_smartflow_keys_send_settles();

    if (next) {
        ngx_add_timer(ev, next);
    }
}


/* one script for each key */
static void
ngx_http_smartflow_keys_send_settles(void)
{
    size_t                             lens[12];
    u_char                            *p, *args[12];
    ngx_uint_t                         i, j;
    ngx_http_smartflow_keys_op_t      *op;
    ngx_http_smartflow_keys_settle_t  *st;
    uint64_t                           n[10];
    u_char                             buf[96 + 10 * (NGX_INT64_LEN + 1)];

    for (i = 0; i < ngx_sf_nsettles; i++) {
        st = &ngx_sf_settles[i];

        n[0] = st->window;
        n[1] = (uint64_t) st->period_start;
        n[2] = st->est_tokens;
        n[3] = st->est_cost;
        n[4] = st->prompt;
        n[5] = st->completion;
        n[6] = st->cost;
        n[7] = (uint64_t) st->period_now;

        p = buf;
        args[0] = p;
        lens[0] = ngx_http_smartflow_keys_counters(p, st->id);
        p += lens[0];

        for (j = 0; j < 8; j++) {
            args[1 + j] = p;
            p = ngx_sprintf(p, "%uL", n[j]);
            lens[1 + j] = p - args[1 + j];
        }

        args[9] = p;
        lens[9] = ngx_http_smartflow_keys_token(p);
        p += lens[9];

        n[8] = st->leased;
        n[9] = st->unused;

        for (j = 8; j < 10; j++) {
            args[2 + j] = p;
            p = ngx_sprintf(p, "%uL", n[j]);
            lens[2 + j] = p - args[2 + j];
        }

        op = ngx_http_smartflow_keys_op(NGX_SF_SCRIPT_SETTLE, st->id, 1, 12,
                                        args, lens);
        if (op) {
            ngx_http_smartflow_keys_op_submit(op);
        }
    }

    ngx_sf_nsettles = 0;
}


/*
 * A reservation's answer into the zone: the window, the budget and the
 * requests, the node's view of Redis should Redis lose its data
 */
static void
ngx_http_smartflow_keys_window_snapshot(redisReply *reply, ngx_uint_t id)
{
    redisReply                     **e;
    ngx_smartflow_key_t             *k;
    ngx_http_smartflow_keys_zone_t  *kz;

    kz = ngx_sf_kz;
    e = reply->element;

    if (id == 0) {
        return;
    }

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, id);

    if (k) {
        k->window = ngx_http_smartflow_keys_num(e[2]);
        k->window_requests = ngx_http_smartflow_keys_num(e[3]);
        k->spent = ngx_http_smartflow_keys_num(e[5]);
        k->reserved = ngx_http_smartflow_keys_num(e[6]);
        k->period_requests = ngx_http_smartflow_keys_num(e[7]);
        k->requests = ngx_http_smartflow_keys_num(e[8]);
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);
}


/* Redis's counters into the zone, for the usage API and the state file */
static void
ngx_http_smartflow_keys_snapshot(redisReply *reply, ngx_uint_t from,
    ngx_uint_t id)
{
    redisReply                     **e;
    ngx_smartflow_key_t             *k;
    ngx_http_smartflow_keys_zone_t  *kz;

    kz = ngx_sf_kz;
    e = reply->element + from;

    if (id == 0) {
        return;
    }

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, id);

    if (k) {
        k->window = ngx_http_smartflow_keys_num(e[0]);
        k->window_requests = ngx_http_smartflow_keys_num(e[1]);
        k->window_tokens = ngx_http_smartflow_keys_num(e[2]);
        k->window_reserved = ngx_http_smartflow_keys_num(e[3]);
        k->period_start = (time_t) ngx_http_smartflow_keys_num(e[4]);
        k->spent = ngx_http_smartflow_keys_num(e[5]);
        k->reserved = ngx_http_smartflow_keys_num(e[6]);
        k->period_requests = ngx_http_smartflow_keys_num(e[7]);
        k->period_prompt = ngx_http_smartflow_keys_num(e[8]);
        k->period_completion = ngx_http_smartflow_keys_num(e[9]);
        k->requests = ngx_http_smartflow_keys_num(e[10]);
        k->prompt_tokens = ngx_http_smartflow_keys_num(e[11]);
        k->completion_tokens = ngx_http_smartflow_keys_num(e[12]);
        k->spend = ngx_http_smartflow_keys_num(e[13]);
        kz->sh->version++;
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);
}


/* the admin API's new key takes its id from Redis: NGX_DONE, it waits */
ngx_int_t
ngx_http_smartflow_keys_redis_next_id(ngx_http_request_t *r, ngx_uint_t *id)
{
    ngx_smartflow_redis_t             *rd;
    ngx_http_smartflow_ctx_t          *ctx;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_ticket_t  *t;

    static const char   *argv[] = { "INCR", "sf:vk:next" };
    static const size_t  len[] = { 4, 10 };

    rd = ngx_sf_kz ? ngx_sf_kz->redis : NULL;

    if (rd == NULL) {
        *id = 0;
        return NGX_OK;
    }

    ctx = ngx_http_smartflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rq = ngx_http_smartflow_keys_rq(r, ctx);
    if (rq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rq->id) {
        *id = rq->id;
        return NGX_OK;
    }

    if (rq->id_failed || !ngx_smartflow_redis_up(rd)) {
        return ngx_http_smartflow_keys_redis_unavailable(r);
    }

    t = ngx_http_smartflow_keys_ticket(rq);
    if (t == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_smartflow_redis_command(rd, ngx_http_smartflow_keys_got_id, t,
                                    2, argv, len)
        != NGX_OK)
    {
        (void) ngx_http_smartflow_keys_punch(t);
        return ngx_http_smartflow_keys_redis_unavailable(r);
    }

    ngx_http_smartflow_keys_wait(r, rq);

    return NGX_DONE;
}


static void
ngx_http_smartflow_keys_got_id(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_smartflow_keys_rq_t  *rq;

    rq = ngx_http_smartflow_keys_punch(data);

    if (rq == NULL) {
        return;
    }

    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        rq->id = (ngx_uint_t) reply->integer;

    } else {
        rq->id_failed = 1;
    }

    r = rq->r;
    c = r->connection;

    ngx_http_finalize_request(r, ngx_http_smartflow_keys_api_rerun(r));
    ngx_http_run_posted_requests(c);
}


/*
 * The usage API reads the key's counters from Redis first, so that any
 * node tells the usage of all: NGX_DONE while it waits, NGX_OK to answer
 * from the zone (Redis away, or read already).
 */
ngx_int_t
ngx_http_smartflow_keys_redis_refresh(ngx_http_request_t *r, ngx_uint_t id)
{
    size_t                             len[16];
    ngx_uint_t                         i;
    ngx_smartflow_redis_t             *rd;
    ngx_http_smartflow_ctx_t          *ctx;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_ticket_t  *t;
    const char                        *argv[16];
    u_char                             counters[32];

    static const char  *fields[] = { "w", "wr", "wt", "wres", "ps", "sp",
                                     "res", "pr", "pp", "pc", "r", "p",
                                     "c", "s" };

    rd = ngx_sf_kz ? ngx_sf_kz->redis : NULL;

    if (rd == NULL || !ngx_smartflow_redis_up(rd)) {
        return NGX_OK;
    }

    ctx = ngx_http_smartflow_get_ctx(r);
    rq = ctx ? ngx_http_smartflow_keys_rq(r, ctx) : NULL;

    if (rq == NULL || rq->refreshed) {
        return NGX_OK;
    }

    rq->refreshed = 1;
    rq->id = id;

    argv[0] = "HMGET";
    len[0] = 5;
    argv[1] = (char *) counters;
    len[1] = ngx_http_smartflow_keys_counters(counters, id);

    for (i = 0; i < 14; i++) {
        argv[2 + i] = fields[i];
        len[2 + i] = ngx_strlen(fields[i]);
    }

    t = ngx_http_smartflow_keys_ticket(rq);
    if (t == NULL) {
        return NGX_OK;
    }

    if (ngx_smartflow_redis_command(rd, ngx_http_smartflow_keys_refreshed,
                                    t, 16, argv, len)
        != NGX_OK)
    {
        (void) ngx_http_smartflow_keys_punch(t);
        return NGX_OK;
    }

    ngx_http_smartflow_keys_wait(r, rq);

    return NGX_DONE;
}


static void
ngx_http_smartflow_keys_refreshed(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_smartflow_keys_rq_t  *rq;

    rq = ngx_http_smartflow_keys_punch(data);

    if (rq == NULL) {
        return;
    }

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 14)
    {
        ngx_http_smartflow_keys_snapshot(reply, 0, rq->id);
    }

    r = rq->r;
    c = r->connection;

    ngx_http_finalize_request(r, ngx_http_smartflow_keys_api_rerun(r));
    ngx_http_run_posted_requests(c);
}


/*
 * A change made in the zone goes to Redis before the admin API answers:
 * once the client has its answer, every node can see the change.
 */
ngx_int_t
ngx_http_smartflow_keys_redis_put(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t id, ngx_uint_t status,
    ngx_str_t *json, ngx_uint_t secret)
{
    size_t                             len[5];
    u_char                            *p;
    ngx_smartflow_out_t                o;
    ngx_smartflow_key_t               *k;
    ngx_smartflow_redis_t             *rd;
    ngx_http_smartflow_ctx_t          *ctx;
    ngx_http_smartflow_keys_rq_t      *rq;
    ngx_http_smartflow_keys_ticket_t  *t;
    const char                        *argv[5];
    u_char                             idbuf[NGX_INT_T_LEN];

    rd = kz->redis;

    if (rd == NULL) {
        return ngx_http_smartflow_send_json(r, status, json);
    }

    ctx = ngx_http_smartflow_get_ctx(r);
    rq = ctx ? ngx_http_smartflow_keys_rq(r, ctx) : NULL;

    if (rq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
    p = NULL;

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, id);

    if (k) {
        k->dirty = 1;

        ngx_smartflow_keys_state_write_key(&o, k);

        p = ngx_pnalloc(r->pool, o.size);
        if (p) {
            o.pos = p;
            o.size = 0;
            ngx_smartflow_keys_state_write_key(&o, k);
        }
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rq->id = id;
    rq->status = status;
    rq->json = *json;
    rq->secret = secret;

    argv[3] = (char *) idbuf;
    len[3] = ngx_sprintf(idbuf, "%ui", id) - idbuf;
    argv[4] = (char *) p;
    len[4] = o.size;

    t = ngx_http_smartflow_keys_ticket(rq);
    if (t == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_smartflow_redis_eval(rd, ngx_sf_scripts[NGX_SF_SCRIPT_PUT],
                                 ngx_http_smartflow_keys_stored, t, 0, 5,
                                 argv, len)
        != NGX_OK)
    {
        (void) ngx_http_smartflow_keys_punch(t);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow proxy: virtual key vk_%ui changed here "
                      "but not in redis; it is shared when redis answers",
                      id);

        return ngx_http_smartflow_keys_unshared(r, rq);
    }

    ngx_http_smartflow_keys_wait(r, rq);

    return NGX_DONE;
}


/*
 * A change made in this zone that Redis did not take: it is shared when
 * Redis answers.  A change that made a secret (a new key, a rotation)
 * still gives it, with "x-smartflow-shared: pending", or the key would
 * be one nobody can use (a rotation without grace has already stopped
 * the old secret here); others answer 503.
 */
static ngx_int_t
ngx_http_smartflow_keys_unshared(ngx_http_request_t *r,
    ngx_http_smartflow_keys_rq_t *rq)
{
    ngx_table_elt_t  *h;

    if (!rq->secret) {
        return ngx_http_smartflow_keys_redis_unavailable(r);
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "x-smartflow-shared");
    ngx_str_set(&h->value, "pending");

    return ngx_http_smartflow_send_json(r, rq->status, &rq->json);
}


static void
ngx_http_smartflow_keys_stored(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    ngx_int_t                        rc;
    ngx_connection_t                *c;
    ngx_smartflow_key_t             *k;
    ngx_http_request_t              *r;
    ngx_http_smartflow_keys_rq_t    *rq;
    ngx_http_smartflow_keys_zone_t  *kz;

    rq = ngx_http_smartflow_keys_punch(data);

    if (rq == NULL) {
        return;
    }

    r = rq->r;
    c = r->connection;
    kz = rd->data;

    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        ngx_shmtx_lock(&kz->shpool->mutex);

        k = ngx_smartflow_keys_by_id(kz->sh, rq->id);

        if (k) {
            k->rev = (ngx_uint_t) reply->integer;
            k->dirty = 0;
        }

        ngx_shmtx_unlock(&kz->shpool->mutex);

        rc = ngx_http_smartflow_send_json(r, rq->status, &rq->json);

    } else if (reply && reply->type == REDIS_REPLY_ERROR
               && ngx_strncmp(reply->str, "REVOKED", 7) == 0)
    {
        /* revoked on another node: the revoked record comes with the poll */
        ngx_shmtx_lock(&kz->shpool->mutex);

        k = ngx_smartflow_keys_by_id(kz->sh, rq->id);

        if (k) {
            k->rev = 0;
            k->dirty = 0;
            kz->sh->redis_ver = 0;
        }

        kz->sh->version++;

        ngx_shmtx_unlock(&kz->shpool->mutex);

        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "smartflow proxy: virtual key vk_%ui was revoked on "
                      "another node; the change made here is dropped",
                      rq->id);

        rc = ngx_http_smartflow_refuse(r,
                 ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                     "invalid_request_error", "key_revoked", NULL,
                     "This key was revoked on another node; a revoked "
                     "key does not change."), 0);

    } else if (reply && reply->type == REDIS_REPLY_ERROR
               && ngx_strncmp(reply->str, "DUPLICATE", 9) == 0)
    {
        /* another node gave the name to another key a moment ago */
        ngx_shmtx_lock(&kz->shpool->mutex);

        k = ngx_smartflow_keys_by_id(kz->sh, rq->id);

        if (k && rq->status == NGX_HTTP_CREATED) {
            ngx_smartflow_keys_free(kz, k);

        } else if (k) {
            /* the record in Redis comes back with the next poll */
            k->rev = 0;
            k->dirty = 0;
            kz->sh->redis_ver = 0;
        }

        kz->sh->version++;

        ngx_shmtx_unlock(&kz->shpool->mutex);

        rc = ngx_http_smartflow_refuse(r,
                 ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                     "invalid_request_error", "duplicate_name", "name",
                     "Another key has this name already."), 0);

    } else {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "smartflow proxy: virtual key vk_%ui changed here "
                      "but not in redis; it is shared when redis answers",
                      rq->id);

        rc = rq->secret ? ngx_http_smartflow_keys_unshared(r, rq)
                        : ngx_http_smartflow_refuse(r,
                              ngx_http_smartflow_keys_redis_unavailable(r),
                              0);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static uint64_t
ngx_http_smartflow_keys_num(redisReply *reply)
{
    uint64_t  n;

    if (reply->type == REDIS_REPLY_INTEGER) {
        return reply->integer > 0 ? (uint64_t) reply->integer : 0;
    }

    if (reply->type == REDIS_REPLY_STRING
        && ngx_smartflow_parse_uint((u_char *) reply->str, reply->len, &n)
           == NGX_OK)
    {
        return n;
    }

    return 0;
}


/* "sf:vk:c:ID", the key's counters hash */
static size_t
ngx_http_smartflow_keys_counters(u_char *buf, ngx_uint_t id)
{
    return ngx_sprintf(buf, "sf:vk:c:%ui", id) - buf;
}
