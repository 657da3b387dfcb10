# Smartflow for NGINX: builds the four dynamic modules against Debian's
# nginx-dev, runs the gateway, the test suites and the benchmark.

SHELL       := /bin/bash
BUILD       ?= $(CURDIR)/build
NGX_SRC     ?= /usr/share/nginx/src
NGX_BUILD   := $(BUILD)/nginx
MODDIR      := $(BUILD)/modules
FAISS_LIB   := $(BUILD)/libsmartflow_faiss.a
MODULES     := proxy cache policy audit
SO          := $(foreach m,$(MODULES),$(MODDIR)/ngx_http_smartflow_$(m)_module.so)
SOURCES     := $(wildcard ngx_smartflow_*/*.c ngx_smartflow_*/*.h)

# Debian's own flags for nginx, so the modules match the binary they load in
CC_OPT      ?= -g -O2 -fstack-protector-strong -Wformat \
               -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2
LD_OPT      ?= -Wl,-z,relro -Wl,-z,now -fPIC

.PHONY: all modules deps run test test-asan asan-modules test-valgrind bench \
        fuzz unit clean verify policy-harness fuzz-policy cache-eval \
        cache-quality cache-bench-bin

all: modules verify

modules: $(SO)

deps:
	@scripts/deps.sh

$(BUILD)/.deps: scripts/deps.sh
	@scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

$(FAISS_LIB): ngx_smartflow_cache/faiss/ngx_smartflow_faiss_c.cpp $(BUILD)/.deps
	g++ -std=c++17 -O2 -fPIC -Wall -Wextra -Werror -c $< \
	    -o $(BUILD)/ngx_smartflow_faiss_c.o
	ar rcs $@ $(BUILD)/ngx_smartflow_faiss_c.o

$(NGX_BUILD)/objs/Makefile: config $(FAISS_LIB)
	rm -rf $(NGX_BUILD)
	cp -r $(NGX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && source ./conf_flags \
	    && SMARTFLOW_FAISS_LIB=$(FAISS_LIB) ./configure \
	       "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(CC_OPT)" \
	       --with-ld-opt="$(LD_OPT)" --add-dynamic-module=$(CURDIR) \
	       > $(BUILD)/configure.log \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(SO): $(NGX_BUILD)/objs/Makefile $(SOURCES)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	@mkdir -p $(MODDIR)
	@# a running nginx keeps the old files mapped: replace, never overwrite
	cp --remove-destination $(NGX_BUILD)/objs/ngx_http_smartflow_*_module.so \
	    $(MODDIR)/

# the audit trail's standalone verifier: OpenSSL only, no nginx
VERIFY      := $(BUILD)/smartflow-verify
VERIFY_SRCS := ngx_smartflow_audit/verify/smartflow_verify.c \
               ngx_smartflow_audit/ngx_smartflow_merkle.c \
               ngx_smartflow_audit/ngx_smartflow_audit_keys.c

verify: $(VERIFY)

$(VERIFY): $(VERIFY_SRCS) ngx_smartflow_audit/ngx_smartflow_merkle.h \
        ngx_smartflow_audit/ngx_smartflow_audit_keys.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu99 -O2 -g -Wall -Wextra -Werror $(VERIFY_CFLAGS) \
	    -Ingx_smartflow_audit $(VERIFY_SRCS) -lcrypto -o $@

run: modules verify
	@scripts/run.sh

# every suite, then the nginx suites again with AddressSanitizer
test: modules verify asan-modules
	@scripts/test.sh
	@SMARTFLOW_ASAN=1 scripts/test.sh $(ASAN_SUITES)

ASAN_SUITES ?= $(wildcard t/proxy t/providers t/keys t/audit t/redis \
                          t/cache t/policy) t/clients

asan-modules: $(BUILD)/.deps
	@$(MAKE) --no-print-directory modules BUILD=$(CURDIR)/build-asan \
	    CC_OPT="-g -O1 -fPIC -fsanitize=address -fno-omit-frame-pointer" \
	    LD_OPT="-fsanitize=address -fPIC"
	@$(MAKE) --no-print-directory verify BUILD=$(CURDIR)/build-asan \
	    VERIFY_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=undefined"

test-asan: asan-modules verify
	@SMARTFLOW_ASAN=1 scripts/test.sh $(ASAN_SUITES)

test-valgrind: modules
	@TEST_NGINX_USE_VALGRIND=1 scripts/test.sh

bench: modules
	@bench/run.sh

# libFuzzer targets for the parsers, built with clang and sanitizers
FUZZ_SECONDS ?= 60
FUZZ_INCS   := $(foreach d,src/core src/event src/event/modules src/os/unix \
                 objs src/http src/http/modules src/http/v2,-I$(NGX_BUILD)/$(d))

$(BUILD)/fuzz/json_fuzz: fuzz/ngx_smartflow_json_fuzz.c \
        ngx_smartflow_proxy/ngx_smartflow_json.c \
        ngx_smartflow_proxy/ngx_smartflow_usage.c $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_proxy fuzz/ngx_smartflow_json_fuzz.c \
	    ngx_smartflow_proxy/ngx_smartflow_json.c \
	    ngx_smartflow_proxy/ngx_smartflow_usage.c -lyajl -o $@

$(BUILD)/fuzz/sse_fuzz: fuzz/ngx_smartflow_sse_fuzz.c \
        ngx_smartflow_proxy/ngx_smartflow_sse.c $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_proxy fuzz/ngx_smartflow_sse_fuzz.c \
	    ngx_smartflow_proxy/ngx_smartflow_sse.c -o $@

# each target gets FUZZ_SECONDS, starting from the seed corpus
fuzz: $(BUILD)/fuzz/json_fuzz $(BUILD)/fuzz/sse_fuzz
	@set -o pipefail; for t in json sse; do \
	    mkdir -p $(BUILD)/fuzz/corpus-$$t \
	    && cp fuzz/corpus/$$t/* $(BUILD)/fuzz/corpus-$$t/ \
	    && $(BUILD)/fuzz/$${t}_fuzz -max_total_time=$(FUZZ_SECONDS) \
	        $(BUILD)/fuzz/corpus-$$t 2>&1 | tail -3 || exit 1; \
	done

# unit tests of pure functions, outside nginx, under ASan and UBSan
$(BUILD)/unit/translate_test: unit/ngx_smartflow_translate_test.c \
        unit/ngx_smartflow_unit.h \
        ngx_smartflow_proxy/ngx_http_smartflow_translate_anthropic.c \
        ngx_smartflow_proxy/ngx_http_smartflow_translate.c \
        ngx_smartflow_proxy/ngx_http_smartflow_translate.h \
        ngx_smartflow_proxy/ngx_smartflow_json.c $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	clang -g -O1 -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_proxy unit/ngx_smartflow_translate_test.c \
	    ngx_smartflow_proxy/ngx_http_smartflow_translate_anthropic.c \
	    ngx_smartflow_proxy/ngx_http_smartflow_translate.c \
	    ngx_smartflow_proxy/ngx_smartflow_json.c -o $@

$(BUILD)/unit/translate_gemini_test: \
        unit/ngx_smartflow_translate_gemini_test.c unit/ngx_smartflow_unit.h \
        ngx_smartflow_proxy/ngx_http_smartflow_translate_gemini.c \
        ngx_smartflow_proxy/ngx_http_smartflow_translate.c \
        ngx_smartflow_proxy/ngx_http_smartflow_translate.h \
        ngx_smartflow_proxy/ngx_smartflow_json.c $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	clang -g -O1 -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_proxy unit/ngx_smartflow_translate_gemini_test.c \
	    ngx_smartflow_proxy/ngx_http_smartflow_translate_gemini.c \
	    ngx_smartflow_proxy/ngx_http_smartflow_translate.c \
	    ngx_smartflow_proxy/ngx_smartflow_json.c -o $@

$(BUILD)/unit/json_test: unit/ngx_smartflow_json_test.c \
        unit/ngx_smartflow_unit.h ngx_smartflow_proxy/ngx_smartflow_json.c \
        ngx_smartflow_proxy/ngx_smartflow_usage.c $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	clang -g -O1 -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_proxy unit/ngx_smartflow_json_test.c \
	    ngx_smartflow_proxy/ngx_smartflow_json.c \
	    ngx_smartflow_proxy/ngx_smartflow_usage.c -o $@

$(BUILD)/unit/cache_text_test: unit/ngx_smartflow_cache_text_test.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.h $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	clang -g -O1 -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_cache unit/ngx_smartflow_cache_text_test.c -lm -o $@

unit: $(BUILD)/unit/translate_test $(BUILD)/unit/translate_gemini_test \
        $(BUILD)/unit/json_test $(BUILD)/unit/cache_text_test \
        $(BUILD)/unit/policy_gates_test $(BUILD)/unit/policy_pii_test
	$(BUILD)/unit/translate_test
	$(BUILD)/unit/translate_gemini_test
	$(BUILD)/unit/json_test
	$(BUILD)/unit/cache_text_test
	$(BUILD)/unit/policy_gates_test t/policy/corpus/injection.jsonl
	$(BUILD)/unit/policy_pii_test $(filter-out %/injection.jsonl \
	    %/shield.jsonl,$(wildcard t/policy/corpus/*.jsonl))

clean:
	rm -rf $(BUILD) $(CURDIR)/build-asan

# the policy detectors outside nginx, from the module's own sources: the
# quality measurement (t/policy) and the scan cost per KB
POLICY_DETECT := ngx_smartflow_policy/ngx_smartflow_policy_pii.c \
                 ngx_smartflow_policy/ngx_smartflow_policy_inject.c \
                 ngx_smartflow_policy/ngx_smartflow_policy_shield.c

$(BUILD)/unit/policy_harness: unit/ngx_smartflow_policy_harness.c \
        $(POLICY_DETECT) ngx_smartflow_policy/ngx_smartflow_policy.h \
        $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	cc -O2 -Wall -Wextra -Wno-unused-parameter $(FUZZ_INCS) \
	    -Ingx_smartflow_policy unit/ngx_smartflow_policy_harness.c \
	    $(POLICY_DETECT) -lpcre2-8 -o $@

# a detector's unit program, unit/ngx_smartflow_policy_NAME_test.c, makes
# policy_NAME_test: it #includes the detector it tests (to reach its
# static functions), which is therefore left out of the sources it links
$(BUILD)/unit/policy_%_test: unit/ngx_smartflow_policy_%_test.c \
        unit/ngx_smartflow_policy_unit.h \
        $(POLICY_DETECT) ngx_smartflow_policy/ngx_smartflow_policy.h \
        $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	clang -g -O1 -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_policy $< \
	    $(filter-out $(addprefix ngx_smartflow_policy/,$(shell sed -n \
	        's/^#include "\(ngx_smartflow_policy_[a-z_]*\.c\)"/\1/p' $<)), \
	        $(POLICY_DETECT)) -lpcre2-8 -o $@

policy-harness: $(BUILD)/unit/policy_harness

# the MetaCache's quality on the labelled pairs, with the module's own
# text functions and FAISS (README: "MetaCache quality")
$(BUILD)/unit/cache_eval: unit/ngx_smartflow_cache_eval.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.h \
        $(FAISS_LIB) $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	cc -g -O2 $(FUZZ_INCS) -Ingx_smartflow_cache \
	    unit/ngx_smartflow_cache_eval.c \
	    ngx_smartflow_cache/ngx_smartflow_cache_text.c \
	    $(FAISS_LIB) -l:libfaiss.a -lopenblas -lgomp -lstdc++ -lyajl -lm \
	    -o $@

PAWS ?= $(CURDIR)/../shared/testdata/paraphrase/paws_wiki_test_sample.jsonl

cache-eval: $(BUILD)/unit/cache_eval

cache-quality: $(BUILD)/unit/cache_eval
	$(BUILD)/unit/cache_eval t/cache/pairs.jsonl
	@if [ -f $(PAWS) ]; then $(BUILD)/unit/cache_eval $(PAWS); fi

# phase 4 at scale, for make bench (bench/cache.sh)
$(BUILD)/unit/cache_bench: unit/ngx_smartflow_cache_bench.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.c \
        ngx_smartflow_cache/ngx_smartflow_cache_text.h \
        $(FAISS_LIB) $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/unit
	cc -g -O2 $(FUZZ_INCS) -Ingx_smartflow_cache \
	    unit/ngx_smartflow_cache_bench.c \
	    ngx_smartflow_cache/ngx_smartflow_cache_text.c \
	    $(FAISS_LIB) -l:libfaiss.a -lopenblas -lgomp -lstdc++ -lm -o $@

cache-bench-bin: $(BUILD)/unit/cache_bench

$(BUILD)/fuzz/policy_fuzz: fuzz/ngx_smartflow_policy_fuzz.c $(POLICY_DETECT) \
        ngx_smartflow_policy/ngx_smartflow_policy.h $(NGX_BUILD)/objs/Makefile
	@mkdir -p $(BUILD)/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined $(FUZZ_INCS) \
	    -Ingx_smartflow_policy fuzz/ngx_smartflow_policy_fuzz.c \
	    $(POLICY_DETECT) -lpcre2-8 -o $@

# the policy scanners under libFuzzer, FUZZ_SECONDS from the seed corpus
fuzz-policy: $(BUILD)/fuzz/policy_fuzz
	@mkdir -p $(BUILD)/fuzz/corpus-policy
	@cp fuzz/corpus/policy/* $(BUILD)/fuzz/corpus-policy/
	@set -o pipefail; $(BUILD)/fuzz/policy_fuzz -max_len=8192 -timeout=10 \
	    -max_total_time=$(FUZZ_SECONDS) $(BUILD)/fuzz/corpus-policy 2>&1 \
	    | tail -3
