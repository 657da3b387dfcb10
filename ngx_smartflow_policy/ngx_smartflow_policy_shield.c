/*
 * Shield: what a command that an agent asks to run would destroy.  The
 * strings of a tool call's arguments (a shell command, an SQL query) are
 * read against SQL, shell, git and infrastructure rules; a rule is either
 * destructive (the group's tier for its category applies) or only risky
 * (a warning at most).  Protected git branches: main, master, production,
 * prod, release*, trunk, develop.
 */

#include "ngx_smartflow_policy.h"


typedef ngx_uint_t (*ngx_smartflow_shield_pt)(u_char *p, size_t len,
    size_t s, size_t e);

typedef struct {
    ngx_uint_t               rule;
    const char              *name;
    ngx_uint_t               destructive;
    const char              *pattern;
    ngx_smartflow_shield_pt  check;     /* confirms a match, or NULL */
    pcre2_code              *re;
} ngx_smartflow_shield_rule_t;


extern pcre2_match_data  *ngx_smartflow_policy_md;


static ngx_uint_t ngx_smartflow_sql_no_where(u_char *p, size_t len,
    size_t s, size_t e);
static ngx_uint_t ngx_smartflow_rm_target(u_char *p, size_t len,
    size_t s, size_t e);


#define NGX_SF_PROTECTED                                                     \
    "(?:main|master|production|prod|release[\\w./-]*|trunk|develop)"

#define ngx_isalnum(c)                                                       \
    (((c) >= '0' && (c) <= '9') || (((c) | 0x20) >= 'a'                     \
                                     && ((c) | 0x20) <= 'z'))


/* the end of a shell word */
#define NGX_SF_WEND  "(?=$|[\\s;&|)'\"`])"


static ngx_smartflow_shield_rule_t  ngx_smartflow_shield_rules[] = {

    /* SQL */
    { NGX_SF_RULE_SQL, "sql.drop", 1,
      "(?i)\\bdrop\\s+(?:database|schema|table|tablespace|keyspace|"
      "collection|index|view|materialized\\s+view|user|role)\\b", NULL, NULL },

    { NGX_SF_RULE_SQL, "sql.truncate", 1,
      "(?i)\\btruncate\\s+(?:table\\s+)?[\\w.`\"\\[]", NULL, NULL },

    { NGX_SF_RULE_SQL, "sql.delete_all", 1,
      "(?i)\\bdelete\\s+from\\s+[\\w.`\"\\[\\]]+",
      ngx_smartflow_sql_no_where, NULL },

    { NGX_SF_RULE_SQL, "sql.update_all", 1,
      "(?i)\\bupdate\\s+[\\w.`\"\\[\\]]+\\s+set\\b",
      ngx_smartflow_sql_no_where, NULL },

    { NGX_SF_RULE_SQL, "sql.drop_database", 1,
      "(?i)\\b(?:dropdb|mysqladmin\\b[^;&|\\n]*\\bdrop)\\b", NULL, NULL },

    { NGX_SF_RULE_SQL, "sql.flush", 1,
      "(?i)\\b(?:flushall|flushdb)\\b|\\.dropDatabase\\(|"
      "\\.drop\\(\\s*\\)|\\.deleteMany\\(\\s*\\{\\s*\\}\\s*\\)", NULL, NULL },

    { NGX_SF_RULE_SQL, "sql.alter_drop", 0,
      "(?i)\\balter\\s+table\\s+\\S+\\s+drop\\b", NULL, NULL },

    /* shell */
    { NGX_SF_RULE_SHELL, "shell.rm_root", 1,
      "(?:^|[\\s;&|(`'\"])(?:sudo\\s+)?rm\\s+((?:-{1,2}[\\w-]+\\s+)*)"
      "([^;&|\\n]*)", ngx_smartflow_rm_target, NULL },

    { NGX_SF_RULE_SHELL, "shell.mkfs", 1,
      "\\bmkfs(?:\\.\\w+)?\\s|\\bmke2fs\\b|\\bwipefs\\b", NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.dd_device", 1,
      "\\bdd\\b[^;&|\\n]*\\bof=/dev/(?:sd|hd|nvme|xvd|vd|mmcblk|disk|"
      "rdisk|md|dm-|mapper)", NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.device_write", 1,
      ">\\s*/dev/(?:sd[a-z]|nvme\\d|hd[a-z]|xvd[a-z]|vd[a-z]|mmcblk\\d)|"
      "\\bshred\\b[^;&|\\n]*/dev/", NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.chmod_root", 1,
      "\\bchmod\\s+(?:-\\w*R\\w*\\s+|--recursive\\s+)(?:-\\S+\\s+)*"
      "(?:0?777|a\\+rwx|ugo\\+rwx)\\s+/(?:\\*|\\s|$|[;&|])|"
      "\\bchown\\s+(?:-\\w*R\\w*\\s+|--recursive\\s+)\\S+\\s+/(?:\\s|$|[;&|])",
      NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.fork_bomb", 1,
      ":\\(\\)\\s*\\{\\s*:\\s*\\|\\s*:\\s*&\\s*\\}\\s*;\\s*:", NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.code_delete", 1,
      "\\b(?:shutil\\.rmtree|os\\.(?:remove|unlink|rmdir|removedirs)|"
      "fs\\.(?:rmSync|rmdirSync|unlinkSync)|FileUtils\\.rm_r[f]?)\\s*\\(\\s*"
      "[\"'](?:/(?:etc|usr|var|bin|boot|home|root|lib|opt|srv)?(?:/[^/\"']*)?"
      "|~[^\"']*)[\"']", NULL, NULL },

    { NGX_SF_RULE_SHELL, "shell.find_delete", 0,
      "\\bfind\\s+(?:/|~|\\$HOME)\\S*\\s[^;&|\\n]*-delete\\b", NULL, NULL },

    /* git */
    { NGX_SF_RULE_GIT, "git.force_push", 1,
      "\\bgit\\s+(?:-C\\s+\\S+\\s+)?push\\b(?=[^;&|\\n]*(?:\\s--force"
      NGX_SF_WEND "|\\s-f" NGX_SF_WEND "|\\s-[a-zA-Z]*f[a-zA-Z]*" NGX_SF_WEND
      "|\\s\\+" NGX_SF_PROTECTED "\\b))"
      "(?![^;&|\\n]*\\s--force-with-lease)", NULL, NULL },

    { NGX_SF_RULE_GIT, "git.reset_hard", 1,
      "\\bgit\\s+(?:-C\\s+\\S+\\s+)?reset\\s+(?:[^;&|\\n]*\\s)?--hard\\b",
      NULL, NULL },

    { NGX_SF_RULE_GIT, "git.delete_branch", 1,
      "\\bgit\\s+(?:-C\\s+\\S+\\s+)?(?:branch\\s+(?:-\\w+\\s+)*"
      "(?:-D|-d|--delete)\\s+(?:-\\S+\\s+)*(?:origin/)?" NGX_SF_PROTECTED
      NGX_SF_WEND "|push\\s+[^;&|\\n]*(?:--delete\\s+|\\s:)"
      NGX_SF_PROTECTED NGX_SF_WEND ")", NULL, NULL },

    { NGX_SF_RULE_GIT, "git.discard", 1,
      "\\bgit\\s+(?:-C\\s+\\S+\\s+)?(?:clean\\s+(?:-\\w*\\s+)*-\\w*[fF]"
      "|checkout\\s+(?:-f\\s+)?--\\s+\\.(?:\\s|$)"
      "|restore\\s+(?:--worktree\\s+)?\\.(?:\\s|$)"
      "|stash\\s+(?:clear|drop)\\b)", NULL, NULL },

    /* infrastructure */
    { NGX_SF_RULE_INFRA, "infra.kubectl_delete", 1,
      "\\bkubectl\\s+(?:[^;&|\\n]*\\s)?delete\\s+(?:(?:namespace|ns|"
      "nodes?|pv|persistentvolumes?|crd|customresourcedefinitions?)\\b|"
      "[^;&|\\n]*\\s--all(?:-namespaces)?\\b)", NULL, NULL },

    { NGX_SF_RULE_INFRA, "infra.terraform_destroy", 1,
      "\\b(?:terraform|tofu|terragrunt)\\s+(?:[^;&|\\n]*\\s)?(?:destroy\\b|"
      "apply\\s+[^;&|\\n]*-destroy\\b)|\\bpulumi\\s+destroy\\b", NULL, NULL },

    { NGX_SF_RULE_INFRA, "infra.bucket_remove", 1,
      "\\baws\\s+s3\\s+(?:rb\\s+[^;&|\\n]*--force|rm\\s+[^;&|\\n]*"
      "--recursive)\\b|\\bgsutil\\s+(?:-m\\s+)?(?:rb|rm\\s+-\\w*r)\\b|"
      "\\bgcloud\\s+storage\\s+(?:rm\\s+[^;&|\\n]*--recursive|buckets\\s+"
      "delete)\\b|\\baz\\s+storage\\s+(?:container|account)\\s+delete\\b|"
      "\\baws\\s+s3api\\s+delete-bucket\\b", NULL, NULL },

    { NGX_SF_RULE_INFRA, "infra.cloud_delete", 1,
      "\\baws\\s+(?:rds\\s+delete-db-(?:instance|cluster)|ec2\\s+"
      "terminate-instances|dynamodb\\s+delete-table|cloudformation\\s+"
      "delete-stack)\\b|\\bgcloud\\s+(?:projects|sql\\s+instances|"
      "container\\s+clusters|compute\\s+instances)\\s+delete\\b|"
      "\\baz\\s+group\\s+delete\\b|\\bhelm\\s+(?:uninstall|delete)\\b",
      NULL, NULL },

    { NGX_SF_RULE_INFRA, "infra.data_delete", 1,
      "\\bkafka-topics\\b[^;&|\\n]*\\s--delete\\b|\\bkafka-delete-records\\b|"
      "\\bkafka-consumer-groups\\b[^;&|\\n]*\\s--delete\\b|"
      "\\bvault\\s+(?:secrets\\s+disable|kv\\s+destroy|kv\\s+metadata\\s+"
      "delete)\\b|_delete_by_query\\b|\\bcurl\\b[^;&|\\n]*-X\\s*DELETE\\b"
      "[^;&|\\n]*:9200/|\\bdocker\\s+volume\\s+(?:rm|remove)\\b|"
      "\\bdocker\\s+rm\\s+-\\w*f\\w*\\s+\\$\\(docker\\s+ps\\s+-\\w*a|"
      "\\baws\\s+s3\\s+sync\\b[^;&|\\n]*\\s--delete\\b", NULL, NULL },

    { NGX_SF_RULE_SQL, "sql.grant_all", 1,
      "(?i)\\bgrant\\s+all(?:\\s+privileges)?\\s+on\\s+\\*\\.\\*", NULL,
      NULL },

    { NGX_SF_RULE_INFRA, "infra.docker_prune", 0,
      "\\bdocker\\s+(?:system|volume)\\s+prune\\b", NULL, NULL }
};


ngx_int_t
ngx_smartflow_shield_init(void)
{
    int          err;
    ngx_uint_t   i;
    PCRE2_SIZE   off;

    for (i = 0; i < sizeof(ngx_smartflow_shield_rules)
                    / sizeof(ngx_smartflow_shield_rule_t); i++)
    {
        ngx_smartflow_shield_rules[i].re = pcre2_compile(
            (PCRE2_SPTR) ngx_smartflow_shield_rules[i].pattern,
            PCRE2_ZERO_TERMINATED, PCRE2_MULTILINE, &err, &off, NULL);

        if (ngx_smartflow_shield_rules[i].re == NULL) {
            return NGX_ERROR;
        }

        (void) pcre2_jit_compile(ngx_smartflow_shield_rules[i].re,
                                 PCRE2_JIT_COMPLETE);
    }

    return NGX_OK;
}


#define NGX_SF_SHIELD_MAX  65536

static u_char  ngx_smartflow_shield_buf[NGX_SF_SHIELD_MAX];


#define ngx_sf_word(c)                                                       \
    (ngx_isalnum(c) || (c) == '_' || (c) == '-' || (c) == '.')


/* blanks n bytes from p on, keeping the line breaks */
static void
ngx_smartflow_blank(u_char *p, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (p[i] != '\n') {
            p[i] = ' ';
        }
    }
}


/*
 * The command as a shell would run it, for the rules: text that is only
 * data is blanked (heredoc bodies, here-strings, the quoted arguments of
 * echo, printf, grep and the like, values given to variables), and
 * quotes around a command word are dropped ("git" reset --hard).
 */
static size_t
ngx_smartflow_shield_prepare(u_char *src, size_t len, u_char *p)
{
    size_t       i, j, k, ws, we, dl;
    u_char       q, *d;
    ngx_uint_t   start, data, code;

    static const char  *data_words[] = {
        "echo", "printf", "grep", "egrep", "fgrep", "rg", "ag", "awk",
        "sed", "cat", "less", "more", "head", "tail", "wc", "tee", "sort",
        "md5sum", "sha256sum", "base64", "man", "apropos", "which", "type",
        "history", NULL
    };

    /* what reads its standard input as code */
    static const char  *code_words[] = {
        "bash", "sh", "zsh", "dash", "ksh", "fish", "sudo", "python",
        "python3", "perl", "ruby", "node", "php", "psql", "mysql",
        "sqlite3", "mongosh", "redis-cli", "xargs", "ssh", "eval", "exec",
        "kubectl", "docker", NULL
    };

    ngx_memcpy(p, src, len);

    start = 1;
    data = 0;
    code = 0;

    for (i = 0; i < len; /* void */) {

        if (code && p[i] == '<') {
            i++;
            continue;
        }

        /* heredoc: <<[-]['"]WORD['"] ... a line that is WORD */
        if (p[i] == '<' && i + 2 < len && p[i + 1] == '<' && p[i + 2] != '<')
        {
            j = i + 2;

            if (j < len && p[j] == '-') {
                j++;
            }

            while (j < len && (p[j] == ' ' || p[j] == '\'' || p[j] == '"')) {
                j++;
            }

            d = p + j;

            while (j < len && ngx_sf_word(p[j])) {
                j++;
            }

            dl = (p + j) - d;

            while (j < len && p[j] != '\n') {
                j++;
            }

            if (dl == 0 || j >= len) {
                i += 2;
                continue;
            }

            /* the body, line by line, to the closing word */
            for (k = j + 1; k < len; /* void */) {
                ws = k;

                while (ws < len && p[ws] == '\t') {
                    ws++;
                }

                we = ws;

                while (we < len && p[we] != '\n') {
                    we++;
                }

                if (we - ws == dl && ngx_strncmp(p + ws, d, dl) == 0) {
                    ngx_smartflow_blank(p + j + 1, we - j - 1);
                    break;
                }

                k = we + 1;

                if (we >= len) {
                    ngx_smartflow_blank(p + j + 1, len - j - 1);
                    break;
                }
            }

            i = j + 1;
            start = 1;
            continue;
        }

        /* here-string: <<< WORD */
        if (p[i] == '<' && i + 2 < len && p[i + 1] == '<' && p[i + 2] == '<')
        {
            j = i + 3;

            while (j < len && p[j] == ' ') {
                j++;
            }

            if (j < len && (p[j] == '\'' || p[j] == '"')) {
                q = p[j];
                k = j + 1;

                while (k < len && p[k] != q) {
                    k++;
                }

            } else {
                k = j;

                while (k < len && p[k] != ' ' && p[k] != '\n' && p[k] != ';') {
                    k++;
                }
            }

            ngx_smartflow_blank(p + j, (k < len ? k + 1 : len) - j);
            i = k + 1;
            continue;
        }

        if (p[i] == ';' || p[i] == '|' || p[i] == '&' || p[i] == '\n'
            || p[i] == '(')
        {
            start = 1;
            data = 0;
            code = 0;
            i++;
            continue;
        }

        if (p[i] == ' ' || p[i] == '\t') {
            i++;
            continue;
        }

        if (start) {
            start = 0;

            /* "git" or 'rm' as the command word */
            if ((p[i] == '"' || p[i] == '\'') && i + 2 < len) {
                q = p[i];
                j = i + 1;

                while (j < len && ngx_sf_word(p[j])) {
                    j++;
                }

                if (j < len && p[j] == q && j > i + 1) {
                    p[i] = ' ';
                    p[j] = ' ';
                    i++;
                }
            }

            ws = i;

            while (i < len && ngx_sf_word(p[i])) {
                i++;
            }

            /* VAR='value': data, not a command */
            if (i < len && p[i] == '=' && i > ws) {
                i++;

                if (i < len && (p[i] == '\'' || p[i] == '"')) {
                    q = p[i];
                    k = i + 1;

                    while (k < len && p[k] != q) {
                        k++;
                    }

                    ngx_smartflow_blank(p + i, (k < len ? k + 1 : len) - i);
                    i = k + 1;
                }

                start = 1;
                continue;
            }

            for (k = 0; code_words[k]; k++) {
                dl = ngx_strlen(code_words[k]);

                if (i - ws == dl
                    && ngx_strncmp(p + ws, code_words[k], dl) == 0)
                {
                    code = 1;
                    break;
                }
            }

            for (k = 0; data_words[k]; k++) {
                dl = ngx_strlen(data_words[k]);

                if (i - ws == dl
                    && ngx_strncmp(p + ws, data_words[k], dl) == 0)
                {
                    data = 1;
                    break;
                }
            }

            continue;
        }

        if (data && (p[i] == '\'' || p[i] == '"'
                     || (p[i] == '$' && i + 1 < len && p[i + 1] == '\'')))
        {
            if (p[i] == '$') {
                i++;
            }

            q = p[i];
            k = i + 1;
            ws = 0;

            while (k < len && p[k] != q) {
                if (q == '"' && (p[k] == '`' || (p[k] == '$' && k + 1 < len
                                                  && p[k + 1] == '(')))
                {
                    ws = 1;     /* a command substitution runs */
                }

                if (p[k] == '\\' && q == '"') {
                    k++;
                }

                k++;
            }

            if (!ws) {
                ngx_smartflow_blank(p + i, (k < len ? k + 1 : len) - i);
            }

            i = k + 1;
            continue;
        }

        if (data && p[i] != '`' && !(p[i] == '$' && i + 1 < len
                                     && p[i + 1] == '('))
        {
            p[i++] = ' ';
            continue;
        }

        if (p[i] == '`' || p[i] == '$') {
            start = 1;
            data = 0;
            code = 0;
            i += (p[i] == '$') ? 2 : 1;
            continue;
        }

        i++;
    }

    return len;
}


void
ngx_smartflow_shield_check(u_char *p, size_t len, ngx_smartflow_shield_t *res)
{
    int                           rc;
    size_t                        off;
    ngx_uint_t                    i;
    PCRE2_SIZE                   *ov;
    ngx_smartflow_shield_rule_t  *r;

    res->rule = 0;
    res->name = NULL;
    res->destructive = 0;

    if (len <= NGX_SF_SHIELD_MAX) {
        len = ngx_smartflow_shield_prepare(p, len, ngx_smartflow_shield_buf);
        p = ngx_smartflow_shield_buf;
    }

    for (i = 0; i < sizeof(ngx_smartflow_shield_rules)
                    / sizeof(ngx_smartflow_shield_rule_t); i++)
    {
        r = &ngx_smartflow_shield_rules[i];

        /* a risky finding never hides a destructive one */
        if (res->rule && !r->destructive) {
            continue;
        }

        off = 0;

        while (off < len) {
            rc = ngx_smartflow_re_match(r->re, p, len, off, 0,
                                ngx_smartflow_policy_md);
            if (rc < 0) {
                break;
            }

            ov = pcre2_get_ovector_pointer(ngx_smartflow_policy_md);

            if (r->check == NULL || r->check(p, len, ov[0], ov[1])) {
                res->rule = r->rule;
                res->name = r->name;
                res->destructive = r->destructive;
                break;
            }

            off = (ov[1] > ov[0]) ? ov[1] : ov[0] + 1;
        }

        if (res->destructive) {
            return;
        }
    }
}


/* DELETE / UPDATE whose statement has no WHERE */
static ngx_uint_t
ngx_smartflow_sql_no_where(u_char *p, size_t len, size_t s, size_t e)
{
    size_t  i, k;

    for (i = e; i < len; i++) {
        if (p[i] == ';') {
            break;
        }

        /* an SQL string is skipped; a quote never closed is the shell's */
        if (p[i] == '\'' || p[i] == '"') {
            for (k = i + 1; k < len && p[k] != p[i]; k++) { /* void */ }

            if (k == len) {
                break;
            }

            i = k;
            continue;
        }

        if (i + 5 <= len && (p[i] | 0x20) == 'w'
            && (i == 0 || !(ngx_isalnum(p[i - 1]) || p[i - 1] == '_'))
            && (p[i + 1] | 0x20) == 'h' && (p[i + 2] | 0x20) == 'e'
            && (p[i + 3] | 0x20) == 'r' && (p[i + 4] | 0x20) == 'e'
            && (i + 5 == len || !(ngx_isalnum(p[i + 5]) || p[i + 5] == '_')))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * rm with a recursive flag on the root, a home directory or a top-level
 * system directory; temporary directories and paths inside a project
 * are its ordinary use
 */
static ngx_uint_t
ngx_smartflow_rm_target(u_char *p, size_t len, size_t s, size_t e)
{
    size_t      i, ts, te, depth, sl;
    u_char      c, q;
    ngx_uint_t  recursive, flags, opts;

    static const char  *system[] = {
        "/etc", "/usr", "/var", "/bin", "/sbin", "/boot", "/lib", "/lib64",
        "/opt", "/srv", "/sys", "/dev", "/proc", "/root", "/home", "/mnt",
        "/media", "/Users", "/System", "/Library", "/Applications", NULL
    };

    recursive = 0;
    opts = 1;
    i = s;

    /* to the word rm */
    while (i < e && !(p[i] == 'r' && i + 1 < e && p[i + 1] == 'm'
                      && (i + 2 == e || p[i + 2] == ' ' || p[i + 2] == '\t')))
    {
        i++;
    }

    i += 2;

    while (i < e) {
        while (i < e && (p[i] == ' ' || p[i] == '\t')) {
            i++;
        }

        if (i >= e) {
            break;
        }

        ts = i;
        q = 0;

        if (p[i] == '"' || p[i] == '\'') {
            q = p[i++];
            ts = i;

            while (i < e && p[i] != q) {
                i++;
            }

            te = i;

            if (i < e) {
                i++;
            }

        } else {
            while (i < e && p[i] != ' ' && p[i] != '\t' && p[i] != '"'
                   && p[i] != '\'' && p[i] != '`' && p[i] != ')')
            {
                i++;
            }

            te = i;

            if (i < e && p[i] != ' ' && p[i] != '\t') {
                /* a closing quote or bracket ends the command */
                e = i;
            }
        }

        if (te == ts) {
            continue;
        }

        if (opts && !q && p[ts] == '-') {
            if (te - ts == 2 && p[ts + 1] == '-') {
                opts = 0;
                continue;
            }

            if (p[ts + 1] == '-') {
                if (te - ts == 11
                    && ngx_strncmp(p + ts, "--recursive", 11) == 0)
                {
                    recursive = 1;
                }

                continue;
            }

            for (flags = ts + 1; flags < te; flags++) {
                if (p[flags] == 'r' || p[flags] == 'R') {
                    recursive = 1;
                }
            }

            continue;
        }

        if (!recursive) {
            continue;
        }

        /* the target: /, ~, $HOME, a top-level directory, or a home */
        c = p[ts];

        if (c == '~' || (c == '$' && te - ts >= 5
                         && (ngx_strncmp(p + ts, "$HOME", 5) == 0
                             || ngx_strncmp(p + ts, "${HOME}", 7) == 0)))
        {
            /* the home itself or what is right under it */
            depth = 0;

            for (i = ts; i < te; i++) {
                if (p[i] == '/' && i + 1 < te && p[i + 1] != '*') {
                    depth++;
                }
            }

            if (depth == 0 || (te - ts >= 2 && p[te - 1] == '*')) {
                return 1;
            }

            continue;
        }

        if (c == '*' && te - ts == 1) {
            return 1;
        }

        if (c != '/') {
            continue;
        }

        /* temporary files are what rm -rf is for */
        if ((te - ts >= 4 && ngx_strncmp(p + ts, "/tmp", 4) == 0
             && (te - ts == 4 || p[ts + 4] == '/'))
            || (te - ts >= 9 && ngx_strncmp(p + ts, "/var/tmp/", 9) == 0))
        {
            continue;
        }

        depth = 0;

        for (i = ts; i < te; i++) {
            if (p[i] == '/' && i + 1 < te && p[i + 1] != '*'
                && p[i + 1] != '/')
            {
                depth++;
            }
        }

        if (depth == 0) {
            return 1;       /* the root itself, or all in it */
        }

        if (depth == 1) {
            return 1;       /* "/etc", "/home", "/data" */
        }

        for (flags = 0; system[flags]; flags++) {
            sl = ngx_strlen(system[flags]);

            if (te - ts > sl && ngx_strncmp(p + ts, system[flags], sl) == 0
                && p[ts + sl] == '/' && depth == 2)
            {
                return 1;   /* "/home/user", "/etc/nginx" */
            }
        }
    }

    return 0;
}
