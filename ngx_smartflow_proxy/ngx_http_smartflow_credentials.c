/*
 * Provider credentials encrypted at rest: smartflow_credentials_key names
 * a 256-bit key (a file or an environment variable, 64 hex digits), and
 * a provider's key=enc:BASE64 is decrypted with it, AES-256-GCM through
 * OpenSSL's EVP, when the configuration is read.  The configuration on
 * disk then holds no provider key in clear.  The value is a 12-byte
 * nonce, the ciphertext and the 16-byte tag, base64-encoded; the
 * additional data "smartflow-credential-v1" binds it to its use.  Errors
 * name the provider, never the key or the ciphertext.  scripts/
 * smartflow-credential (built by make) makes such values.
 */

#include <openssl/evp.h>
#include <openssl/crypto.h>

#include "ngx_http_smartflow_proxy.h"


#define NGX_SMARTFLOW_CRED_NONCE  12
#define NGX_SMARTFLOW_CRED_TAG    16
#define NGX_SMARTFLOW_CRED_AAD    "smartflow-credential-v1"


/* the key of the configuration being read (a reload reads it again) */
static u_char        ngx_smartflow_cred_key[32];
static ngx_cycle_t  *ngx_smartflow_cred_cycle;


static ngx_int_t
ngx_smartflow_cred_unhex(u_char *p, size_t len, u_char *out)
{
    size_t     i;
    ngx_int_t  n;

    if (len != 64) {
        return NGX_ERROR;
    }

    for (i = 0; i < 32; i++) {
        n = ngx_hextoi(p + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        out[i] = (u_char) n;
    }

    return NGX_OK;
}


/* smartflow_credentials_key file=PATH | env=NAME; */
char *
ngx_http_smartflow_credentials_key_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf)
{
    u_char           *p, *last, *env;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, name;
    ngx_int_t         rc;
    ngx_file_info_t   fi;
    u_char            buf[256];

    if (ngx_smartflow_cred_cycle == cf->cycle) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "env=", 4) == 0 && value[1].len > 4) {
        env = (u_char *) getenv((char *) value[1].data + 4);

        if (env == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_credentials_key: the environment "
                               "variable \"%s\" is not set",
                               value[1].data + 4);
            return NGX_CONF_ERROR;
        }

        p = env;
        last = p + ngx_strlen(p);

    } else if (ngx_strncmp(value[1].data, "file=", 5) == 0
               && value[1].len > 5)
    {
        name.data = value[1].data + 5;
        name.len = value[1].len - 5;

        if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "smartflow_credentials_key: cannot open "
                               "\"%V\"", &name);
            return NGX_CONF_ERROR;
        }

        n = -1;

        if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR
            && ngx_file_size(&fi) < (off_t) sizeof(buf))
        {
            n = ngx_read_fd(fd, buf, sizeof(buf));
        }

        (void) ngx_close_file(fd);

        if (n < 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_credentials_key: cannot read "
                               "\"%V\" (64 hex digits expected)", &name);
            return NGX_CONF_ERROR;
        }

        p = buf;
        last = buf + n;

    } else {
        return "takes file=PATH or env=NAME";
    }

    while (last > p && (last[-1] == '\n' || last[-1] == '\r'
                        || last[-1] == ' '))
    {
        last--;
    }

    rc = ngx_smartflow_cred_unhex(p, last - p, ngx_smartflow_cred_key);

    ngx_explicit_memzero(buf, sizeof(buf));

    if (rc != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_credentials_key: the key must be 64 "
                           "hex digits (256 bits)");
        return NGX_CONF_ERROR;
    }

    ngx_smartflow_cred_cycle = cf->cycle;

    return NGX_CONF_OK;
}


/* key=enc:BASE64 of a provider: *key becomes the clear value */
ngx_int_t
ngx_http_smartflow_credentials_decrypt(ngx_conf_t *cf, ngx_str_t *provider,
    ngx_str_t *key)
{
    int              len, ok;
    u_char          *plain;
    ngx_str_t        src, raw;
    EVP_CIPHER_CTX  *ctx;

    if (ngx_smartflow_cred_cycle != cf->cycle) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow provider \"%V\": an encrypted key "
                           "needs smartflow_credentials_key before it",
                           provider);
        return NGX_ERROR;
    }

    src.data = key->data + 4;
    src.len = key->len - 4;

    raw.data = ngx_pnalloc(cf->temp_pool, ngx_base64_decoded_length(src.len));
    if (raw.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64(&raw, &src) != NGX_OK
        || raw.len <= NGX_SMARTFLOW_CRED_NONCE + NGX_SMARTFLOW_CRED_TAG)
    {
        goto failed;
    }

    len = raw.len - NGX_SMARTFLOW_CRED_NONCE - NGX_SMARTFLOW_CRED_TAG;

    plain = ngx_pnalloc(cf->pool, len + 1);
    if (plain == NULL) {
        return NGX_ERROR;
    }

    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1
         && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN,
                                NGX_SMARTFLOW_CRED_NONCE, NULL) == 1
         && EVP_DecryptInit_ex(ctx, NULL, NULL, ngx_smartflow_cred_key,
                               raw.data) == 1;

    if (ok) {
        int  n;

        ok = EVP_DecryptUpdate(ctx, NULL, &n,
                               (u_char *) NGX_SMARTFLOW_CRED_AAD,
                               sizeof(NGX_SMARTFLOW_CRED_AAD) - 1) == 1
             && EVP_DecryptUpdate(ctx, plain, &n,
                                  raw.data + NGX_SMARTFLOW_CRED_NONCE, len)
                == 1
             && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG,
                                    NGX_SMARTFLOW_CRED_TAG,
                                    raw.data + raw.len
                                    - NGX_SMARTFLOW_CRED_TAG) == 1
             && EVP_DecryptFinal_ex(ctx, plain + n, &n) == 1;
    }

    EVP_CIPHER_CTX_free(ctx);

    if (!ok) {
        ngx_explicit_memzero(plain, len);
        goto failed;
    }

    key->data = plain;
    key->len = len;

    return NGX_OK;

failed:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow provider \"%V\": the encrypted key cannot "
                       "be decrypted with smartflow_credentials_key (a "
                       "wrong key, or a damaged value)", provider);
    return NGX_ERROR;
}
