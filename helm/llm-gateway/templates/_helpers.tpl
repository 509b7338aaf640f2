{{/* Expand the name of the chart. */}}
{{- define "llm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A default fully qualified app name (63 characters: DNS names). */}}
{{- define "llm-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-gateway.labels" -}}
helm.sh/chart: {{ include "llm-gateway.chart" . }}
{{ include "llm-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "llm-gateway.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "llm-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image: repository@digest when a digest pins it, else repository:tag. Takes (list image
defaultTag). */}}
{{- define "llm-gateway.imageRef" -}}
{{- $image := index . 0 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- end }}
{{- end }}

{{- define "llm-gateway.image" -}}
{{- include "llm-gateway.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the bundled Redis's password: the operator's, or the one the chart
generates (redis-auth-secret.yaml). */}}
{{- define "llm-gateway.redisAuthSecret" -}}
{{- default (printf "%s-redis-auth" (include "llm-gateway.fullname" .)) .Values.redis.bundled.auth.existingSecret }}
{{- end }}

{{/* Paths inside the pod. */}}
{{- define "llm-gateway.configDir" -}}/etc/llm-gateway{{- end }}
{{- define "llm-gateway.configFile" -}}/etc/llm-gateway/gateway.yaml{{- end }}
{{- define "llm-gateway.envoyDir" -}}/etc/envoy{{- end }}
{{- define "llm-gateway.envoyFile" -}}/etc/envoy/envoy.yaml{{- end }}
{{- define "llm-gateway.drainedFile" -}}/run/llm-gateway/envoy-drained{{- end }}
{{- define "llm-gateway.keyDir" -}}/var/run/secrets/llm-gateway{{- end }}
{{- define "llm-gateway.adminTlsDir" -}}/etc/llm-gateway-admin-tls{{- end }}
{{- define "llm-gateway.adminCaDir" -}}/etc/llm-gateway-admin-ca{{- end }}
{{/* Worker 0's plaintext admin socket for Envoy's JSON listener (the shared `run` volume). */}}
{{- define "llm-gateway.adminSocket" -}}/run/llm-gateway/admin-api.sock{{- end }}

{{/* Whether the admin API serves TLS (and so which containers mount its Secrets). */}}
{{- define "llm-gateway.adminTls" -}}
{{- if and .Values.adminApi.enabled .Values.adminApi.tls.enabled }}true{{- end }}
{{- end }}

{{- define "llm-gateway.callerTokenDir" -}}/var/run/secrets/llm-gateway/sidecar-token{{- end }}
{{- define "llm-gateway.stateKeysDir" -}}/var/run/secrets/llm-gateway/state-keys{{- end }}

{{/* The Secret with the sidecar's caller token and state keys (sidecar.auth). */}}
{{- define "llm-gateway.sidecarAuthSecret" -}}
{{- default (printf "%s-sidecar-auth" (include "llm-gateway.fullname" .)) .Values.sidecar.auth.existingSecret }}
{{- end }}

{{/* Default auth header/prefix of the built-in providers. */}}
{{- define "llm-gateway.providerAuth" -}}
{{- $name := index . 0 }}{{- $key := index . 1 }}{{- $file := index . 2 }}
{{- $auth := dict "file" $file }}
{{- if eq $name "openai" }}
{{- $_ := set $auth "header" (default "authorization" $key.header) }}
{{- $_ := set $auth "prefix" (hasKey $key "prefix" | ternary $key.prefix "Bearer ") }}
{{- else if eq $name "anthropic" }}
{{- $_ := set $auth "header" (default "x-api-key" $key.header) }}
{{- if $key.prefix }}{{- $_ := set $auth "prefix" $key.prefix }}{{- end }}
{{- else if eq $name "gemini" }}
{{- $_ := set $auth "header" (default "x-goog-api-key" $key.header) }}
{{- if $key.prefix }}{{- $_ := set $auth "prefix" $key.prefix }}{{- end }}
{{- else }}
{{- if not $key.header }}
{{- fail (printf "providerKeys.%s.header: required for a provider other than openai, anthropic and gemini" $name) }}
{{- end }}
{{- $_ := set $auth "header" $key.header }}
{{- if $key.prefix }}{{- $_ := set $auth "prefix" $key.prefix }}{{- end }}
{{- end }}
{{- toJson $auth }}
{{- end }}

{{/* The Redis URL the sidecar uses (no password: that comes from a Secret). */}}
{{- define "llm-gateway.redisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- printf "redis://%s-redis:6379/0" (include "llm-gateway.fullname" .) }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/*
The gateway configuration: the user's `config` with what the chart owns set over it.
Rendered as JSON (valid YAML) so that large integers keep their exact value.
*/}}
{{- define "llm-gateway.gatewayConfig" -}}
{{- $c := deepCopy (default dict .Values.config) }}
{{- $_ := set $c "listener" (dict "host" "0.0.0.0" "port" (int .Values.envoy.port) "admin_port" (int .Values.envoy.adminPort)) }}
{{- $sidecar := deepCopy (default dict $c.sidecar) }}
{{- $_ := set $sidecar "host" "127.0.0.1" }}
{{- $_ := set $sidecar "port" (int .Values.sidecar.port) }}
{{- $_ := set $sidecar "workers" (int .Values.sidecar.workers) }}
{{- $_ := set $sidecar "caller_token" (dict "file" (printf "%s/caller-token" (include "llm-gateway.callerTokenDir" .))) }}
{{- $_ := set $sidecar "state_keys" (dict "file" (printf "%s/state-keys" (include "llm-gateway.stateKeysDir" .))) }}
{{- $_ := set $c "sidecar" $sidecar }}
{{- $obs := deepCopy (default dict $c.observability) }}
{{- $_ := set $obs "metrics_host" "0.0.0.0" }}
{{- $_ := set $obs "metrics_port" (int .Values.metrics.port) }}
{{- with .Values.otel.envoyTracing }}{{- $_ := set $obs "envoy_otlp_endpoint" . }}{{- end }}
{{- $_ := set $c "observability" $obs }}
{{- with .Values.adminApi }}
{{- if .enabled }}
{{- $_ := set $c "admin_api" (dict "enabled" true "host" .host "port" (int .port) "http_port" (int .httpPort) "read_groups" .readGroups "write_groups" .writeGroups) }}
{{- end }}
{{- end }}
{{- if .Values.adminApi.enabled }}
{{- include "llm-gateway.adminCallers" (list .Values.adminApi (get $c "admin_api")) }}
{{- end }}
{{- $providers := deepCopy (default dict $c.providers) }}
{{- range $name, $key := .Values.providerKeys }}
{{- $p := deepCopy (default dict (index $providers $name)) }}
{{- $file := printf "%s/providers/%s/%s" (include "llm-gateway.keyDir" $) $name $key.key }}
{{- $_ := set $p "auth" (include "llm-gateway.providerAuth" (list $name $key $file) | fromJson) }}
{{- $_ := set $providers $name $p }}
{{- end }}
{{- with .Values.bedrock }}
{{- if .enabled }}
{{- $b := deepCopy (default dict (index $providers "bedrock")) }}
{{- $_ := set $b "schema" "bedrock" }}
{{- $_ := set $b "region" .region }}
{{- with .endpoint }}{{- $_ := set $b "base_url" . }}{{- end }}
{{- $_ := set $providers "bedrock" $b }}
{{- end }}
{{- end }}
{{- with .Values.vertex.gcpServiceAccount }}
{{- if not $.Values.serviceAccount.create }}
{{- fail "vertex.gcpServiceAccount: needs serviceAccount.create (or annotate your own ServiceAccount iam.gke.io/gcp-service-account and set config.providers.vertex)" }}
{{- end }}
{{- $p := deepCopy (default dict (index $providers "vertex")) }}
{{- $v := dict "location" $.Values.vertex.location "credentials" (dict "workload_identity" true) }}
{{- with $.Values.vertex.project }}{{- $_ := set $v "project" . }}{{- end }}
{{- $_ := set $p "schema" "vertex" }}
{{- $_ := set $p "vertex" $v }}
{{- $_ := set $providers "vertex" $p }}
{{- end }}
{{- if $providers }}{{- $_ := set $c "providers" $providers }}{{- end }}
{{- if .Values.staticTokens.existingSecret }}
{{- $identity := deepCopy (default dict $c.identity) }}
{{- $_ := set $identity "static_tokens_file" (printf "%s/static-tokens/%s" (include "llm-gateway.keyDir" .) .Values.staticTokens.key) }}
{{- $_ := set $c "identity" $identity }}
{{- end }}
{{- if .Values.catalog }}
{{- $catalog := deepCopy (default dict $c.catalog) }}
{{- $_ := set $catalog "files" (append (default list $catalog.files) (printf "%s/catalog.yaml" (include "llm-gateway.configDir" .))) }}
{{- $_ := set $c "catalog" $catalog }}
{{- end }}
{{- $redisUrl := include "llm-gateway.redisUrl" . }}
{{- if $redisUrl }}
{{- $store := deepCopy (default dict $c.budget_store) }}
{{- $_ := set $store "redis_url" $redisUrl }}
{{- $_ := set $store "cluster" (and (not .Values.redis.bundled.enabled) .Values.redis.external.cluster) }}
{{- $_ := set $c "budget_store" $store }}
{{- end }}
{{- with .Values.spendPage }}
{{- if .enabled }}
{{- $page := dict "enabled" true "port" (int .port) "session_ttl_s" (int .sessionTtlSeconds) }}
{{- with .publicUrl }}{{- $_ := set $page "public_url" . }}{{- end }}
{{- if .oidc.issuer }}
{{- $oidc := dict "issuer" .oidc.issuer "client_id" .oidc.clientId "scopes" .oidc.scopes }}
{{- with .oidc.discoveryUrl }}{{- $_ := set $oidc "discovery_url" . }}{{- end }}
{{- if .oidc.clientSecret.existingSecret }}{{- $_ := set $oidc "client_secret_env" "SPEND_PAGE_CLIENT_SECRET" }}{{- end }}
{{- $_ := set $page "oidc" $oidc }}
{{- end }}
{{- $_ := set $c "spend_page" $page }}
{{- end }}
{{- end }}
{{- with .Values.login }}
{{- if .issuer }}
{{- $login := dict "issuer" .issuer "client_id" .clientId "scopes" .scopes "token" .token }}
{{- with .discoveryUrl }}{{- $_ := set $login "discovery_url" . }}{{- end }}
{{- with .audience }}{{- $_ := set $login "audience" . }}{{- end }}
{{- $_ := set $c "login" $login }}
{{- end }}
{{- end }}
{{- with .Values.reconcile }}
{{- if .providers }}
{{- $providers := dict }}
{{- range $name, $p := .providers }}
{{- $r := dict "admin_key_env" (include "llm-gateway.adminKeyEnv" $name) }}
{{- with $p.projects }}{{- $_ := set $r "projects" . }}{{- end }}
{{- with $p.workspaces }}{{- $_ := set $r "workspaces" . }}{{- end }}
{{- with $p.apiKeyIds }}{{- $_ := set $r "api_key_ids" . }}{{- end }}
{{- with $p.baseUrl }}{{- $_ := set $r "base_url" . }}{{- end }}
{{- $_ := set $providers $name $r }}
{{- end }}
{{- $alert := dict }}
{{- range $key, $as := dict "unexplainedPct" "unexplained_pct" "unexplainedUsdPerDay" "unexplained_usd_per_day" "outsideUsdPerDay" "outside_usd_per_day" }}
{{- $v := get $.Values.reconcile.alert $key }}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}{{- $_ := set $alert $as (toString $v) }}{{- end }}
{{- end }}
{{- with .alert.webhook }}{{- $_ := set $alert "webhook" . }}{{- end }}
{{- $recon := dict "providers" $providers "schedule" .schedule "rerun_days" (int .rerunDays) }}
{{- if $alert }}{{- $_ := set $recon "alert" $alert }}{{- end }}
{{- $_ := set $c "reconcile" $recon }}
{{- end }}
{{- end }}
{{- toPrettyJson $c }}
{{- end }}

{{/* The variable a reconciled provider's admin key is given to worker 0 in (the gateway's
default for that provider: OPENAI_ADMIN_KEY, ANTHROPIC_ADMIN_KEY). */}}
{{- define "llm-gateway.adminKeyEnv" -}}
{{- printf "%s_ADMIN_KEY" (upper .) }}
{{- end }}

{{/* Worker 0's own secrets (it alone serves the spend page and runs reconciliations): the page's
client secret and the providers' admin keys, by reference only. */}}
{{- define "llm-gateway.worker0Env" -}}
{{- with .Values.spendPage }}
{{- if and .enabled .oidc.issuer .oidc.clientSecret.existingSecret }}
- name: SPEND_PAGE_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .oidc.clientSecret.existingSecret }}
      key: {{ .oidc.clientSecret.key }}
{{- end }}
{{- end }}
{{- range $name, $p := .Values.reconcile.providers }}
- name: {{ include "llm-gateway.adminKeyEnv" $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $p.adminKey.existingSecret }}
      key: {{ default "admin-key" $p.adminKey.key }}
{{- end }}
{{- end }}

{{/* The admin API's own credentials and TLS (admin/auth.py, admin/tls.py), set on the
admin_api mapping given. */}}
{{- define "llm-gateway.adminCallers" -}}
{{- $v := index . 0 }}{{- $admin := index . 1 }}
{{- $_ := set $admin "audiences" $v.audiences }}
{{- with $v.issuers }}{{- $_ := set $admin "issuers" . }}{{- end }}
{{- with $v.staticTokens }}{{- $_ := set $admin "static_tokens" . }}{{- end }}
{{- if $v.tls.enabled }}
{{- $dir := include "llm-gateway.adminTlsDir" . }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) }}
{{- if $v.tls.clientCASecret }}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" (include "llm-gateway.adminCaDir" .)) }}
{{- end }}
{{- $_ := set $admin "tls" $tls }}
{{- if $v.httpPort }}
{{- $_ := set $admin "socket" (include "llm-gateway.adminSocket" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* What only a restart applies (Envoy's bootstrap, process-lifetime state): hashed into the
pod template. Identity, policies, budgets, rate limits and the catalog reload in the running
sidecars. */}}
{{- define "llm-gateway.restartChecksum" -}}
{{- $c := include "llm-gateway.gatewayConfig" . | fromJson }}
{{- $restart := omit $c "identity" "policies" "budgets" "rate_limits" "catalog" }}
{{- toJson (dict "config" $restart "envoy" .Values.envoy "sidecar" .Values.sidecar "providerKeys" .Values.providerKeys "redis" .Values.redis "otel" .Values.otel) | sha256sum }}
{{- end }}

{{/* Values that a schema cannot check; each failure names the value. */}}
{{- define "llm-gateway.validate" -}}
{{- $sidecar := default dict .Values.config.sidecar }}
{{- $grace := int (default 600 $sidecar.grace_s) }}
{{- $drain := int (default 3 $sidecar.drain_s) }}
{{- $need := add $grace $drain 15 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "terminationGracePeriodSeconds: %d is too short for config.sidecar.grace_s (%d) + drain_s (%d) + 15 s (final settles, the hooks' polls and exits): at least %d" (int .Values.terminationGracePeriodSeconds) $grace $drain $need) }}
{{- end }}
{{- if and .Values.config.budgets (not (include "llm-gateway.redisUrl" .)) }}
{{- fail "redis.external.url: required when config.budgets is set (or set redis.bundled.enabled: true for an evaluation)" }}
{{- end }}
{{- if and .Values.config.rate_limits (not (include "llm-gateway.redisUrl" .)) }}
{{- fail "redis.external.url: required when config.rate_limits is set (or set redis.bundled.enabled: true for an evaluation)" }}
{{- end }}
{{- if and .Values.redis.bundled.enabled .Values.redis.external.url }}
{{- fail "redis.external.url: set either it or redis.bundled.enabled, not both" }}
{{- end }}
{{- if and .Values.redis.external.url (not (regexMatch "^rediss?://[^@/]+(/[0-9]*)?$" .Values.redis.external.url)) }}
{{- fail "redis.external.url: must be redis://HOST:PORT[/DB] or rediss://..., without a password (use redis.external.existingSecret)" }}
{{- end }}
{{- if and .Values.envoy.tls.enabled (not .Values.envoy.tls.secretName) }}
{{- fail "envoy.tls.secretName: required when envoy.tls.enabled is true" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.parentRefs: required when httpRoute.enabled is true" }}
{{- end }}
{{- $cfg := .Values.config }}
{{- if hasKey $cfg "listener" }}
{{- fail "config.listener: set by the chart (envoy.port, envoy.adminPort; Envoy listens on 0.0.0.0); remove it from config" }}
{{- end }}
{{- range $k, $by := dict "host" "the chart (127.0.0.1: only Envoy in the pod reaches it)" "port" "sidecar.port" "workers" "sidecar.workers" "caller_token" "the chart (sidecar.auth)" "state_keys" "the chart (sidecar.auth)" "tls" "the chart (Envoy and the sidecar share the pod: loopback; mutual TLS is for a sidecar apart, docs/security.md)" }}
{{- if hasKey (default dict $cfg.sidecar) $k }}
{{- fail (printf "config.sidecar.%s: set by %s; remove it from config" $k $by) }}
{{- end }}
{{- end }}
{{- range $k, $by := dict "metrics_host" "the chart (0.0.0.0: scraped through the pod IP)" "metrics_port" "metrics.port (worker i: metrics.port + i)" "envoy_otlp_endpoint" "otel.envoyTracing" }}
{{- if hasKey (default dict $cfg.observability) $k }}
{{- fail (printf "config.observability.%s: set by %s; remove it from config" $k $by) }}
{{- end }}
{{- end }}
{{- $mport := int .Values.metrics.port }}
{{- $workers := int .Values.sidecar.workers }}
{{- $used := dict (toString (int .Values.envoy.port)) "envoy.port" (toString (int .Values.envoy.opsPort)) "envoy.opsPort" (toString (int .Values.envoy.adminPort)) "envoy.adminPort" }}
{{- if .Values.adminApi.enabled }}{{- $_ := set $used (toString (int .Values.adminApi.port)) "adminApi.port" }}{{- end }}
{{- range $i, $_ := until $workers }}
{{- $_ := set $used (toString (add (int $.Values.sidecar.port) $i)) (printf "sidecar.port + %d (worker %d)" $i $i) }}
{{- end }}
{{- range $i, $_ := until $workers }}
{{- $p := toString (add $mport $i) }}
{{- if hasKey $used $p }}
{{- fail (printf "metrics.port: %s (worker %d's /metrics) is already used by %s" $p $i (get $used $p)) }}
{{- end }}
{{- end }}
{{- if gt (add $mport $workers -1) 65535 }}
{{- fail (printf "metrics.port: %d + %d workers goes past 65535" $mport $workers) }}
{{- end }}
{{- if and .Values.otel.endpoint (not (regexMatch "^https?://[^@/]+(/[^@]*)?$" .Values.otel.endpoint)) }}
{{- fail "otel.endpoint: must be http(s)://HOST[:PORT][/PATH], without credentials (put headers in otel.headersSecret)" }}
{{- end }}
{{- if and .Values.otel.headersSecret.name (not .Values.otel.endpoint) }}
{{- fail "otel.headersSecret.name: set otel.endpoint too (the headers go to that collector)" }}
{{- end }}
{{- if hasKey $cfg "admin_api" }}
{{- fail "config.admin_api: set by the chart from adminApi (adminApi.enabled, port, httpPort, readGroups, writeGroups, audiences, issuers, staticTokens, tls); remove it from config" }}
{{- end }}
{{- $admin := .Values.adminApi }}
{{- if $admin.enabled }}
{{- if not (include "llm-gateway.redisUrl" .) }}
{{- fail "adminApi.enabled: needs Redis (the API reads budget state and spend rollups from it): set redis.external.url, or redis.bundled.enabled for an evaluation" }}
{{- end }}
{{- $taken := dict (toString (int .Values.envoy.port)) "envoy.port" (toString (int .Values.envoy.opsPort)) "envoy.opsPort" (toString (int .Values.envoy.adminPort)) "envoy.adminPort" }}
{{- range $i, $_ := until (int .Values.sidecar.workers) }}
{{- $_ := set $taken (toString (add (int $.Values.sidecar.port) $i)) (printf "sidecar.port + %d (worker %d)" $i $i) }}
{{- end }}
{{- range $k, $port := dict "adminApi.port" (int $admin.port) "adminApi.httpPort" (int $admin.httpPort) }}
{{- if and $port (hasKey $taken (toString $port)) }}
{{- fail (printf "%s: %d is already used by %s" $k $port (get $taken (toString $port))) }}
{{- end }}
{{- end }}
{{- if eq (int $admin.port) (int $admin.httpPort) }}
{{- fail (printf "adminApi.httpPort: %d is adminApi.port too" (int $admin.httpPort)) }}
{{- end }}
{{- end }}
{{- if and $admin.tls.enabled (not $admin.tls.secretName) }}
{{- fail "adminApi.tls.secretName: required when adminApi.tls.enabled is true (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and $admin.tls.clientCASecret (not $admin.tls.enabled) }}
{{- fail "adminApi.tls.clientCASecret: client certificates need adminApi.tls.enabled: true" }}
{{- end }}
{{- range $k, $by := dict "spend_page" "spendPage" "login" "login" "reconcile" "reconcile" }}
{{- if hasKey $cfg $k }}
{{- fail (printf "config.%s: set by the chart from %s; remove it from config" $k $by) }}
{{- end }}
{{- end }}
{{- $page := .Values.spendPage }}
{{- if $page.enabled }}
{{- if not (and $admin.enabled $admin.httpPort) }}
{{- fail "spendPage.enabled: needs adminApi.enabled and adminApi.httpPort (the page is served through the admin API's JSON listener, with its authorisation)" }}
{{- end }}
{{- $taken := dict (toString (int .Values.envoy.port)) "envoy.port" (toString (int .Values.envoy.opsPort)) "envoy.opsPort" (toString (int .Values.envoy.adminPort)) "envoy.adminPort" (toString (int $admin.port)) "adminApi.port" (toString (int $admin.httpPort)) "adminApi.httpPort" }}
{{- range $i, $_ := until (int .Values.sidecar.workers) }}
{{- $_ := set $taken (toString (add (int $.Values.sidecar.port) $i)) (printf "sidecar.port + %d (worker %d)" $i $i) }}
{{- $_ := set $taken (toString (add (int $.Values.metrics.port) $i)) (printf "metrics.port + %d (worker %d's /metrics)" $i $i) }}
{{- end }}
{{- if hasKey $taken (toString (int $page.port)) }}
{{- fail (printf "spendPage.port: %d is already used by %s" (int $page.port) (get $taken (toString (int $page.port)))) }}
{{- end }}
{{- if and $page.oidc.issuer (not $page.publicUrl) }}
{{- fail "spendPage.publicUrl: required with spendPage.oidc.issuer (the IdP redirects to <publicUrl>/ui/callback)" }}
{{- end }}
{{- if and $page.oidc.issuer (not $page.oidc.clientId) }}
{{- fail "spendPage.oidc.clientId: required with spendPage.oidc.issuer" }}
{{- end }}
{{- end }}
{{- if and .Values.login.issuer (not .Values.login.clientId) }}
{{- fail "login.clientId: required with login.issuer" }}
{{- end }}
{{- if .Values.reconcile.providers }}
{{- if not $admin.enabled }}
{{- fail "reconcile.providers: needs adminApi.enabled (worker 0 runs the reconciliations and serves their results)" }}
{{- end }}
{{- $zone := get (default dict $cfg.spend) "timezone" }}
{{- if and $zone (ne (toString $zone) "UTC") }}
{{- fail (printf "reconcile.providers: the providers bill by UTC day, so the rollups must be kept in UTC days (config.spend.timezone is %s)" $zone) }}
{{- end }}
{{- end }}
{{- $journal := .Values.sidecar.journal }}
{{- if not (or $journal.persistence.enabled $journal.acceptLossOnPodReplacement) }}
{{- range $i, $b := (default list $cfg.budgets) }}
{{- if eq (toString (get (default dict $b) "on_redis_error")) "fail_open" }}
{{- fail (printf "config.budgets[%d] (%v): on_redis_error: fail_open keeps spend Redis has not taken in a journal that an emptyDir loses with the pod: set sidecar.journal.persistence.enabled (a ReadWriteMany volume the next pod adopts it from), or sidecar.journal.acceptLossOnPodReplacement: true to accept the loss" $i (get (default dict $b) "name")) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $by := dict "redis_url" "redis.external.url or redis.bundled" "cluster" "redis.external.cluster" }}
{{- if hasKey (default dict $cfg.budget_store) $k }}
{{- fail (printf "config.budget_store.%s: set by the chart from %s" $k $by) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The sidecar's environment (also check-config's). Secrets only by reference. */}}
{{- define "llm-gateway.sidecarEnv" -}}
- {name: PYTHONUNBUFFERED, value: "1"}
{{- if .Values.redis.bundled.enabled }}
- name: GATEWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-gateway.redisAuthSecret" . }}
      key: {{ .Values.redis.bundled.auth.passwordKey }}
{{- else if .Values.redis.external.existingSecret }}
- name: GATEWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.passwordKey }}
{{- end }}
{{- if .Values.redis.external.tls.caSecret }}
- {name: SSL_CERT_FILE, value: /etc/llm-gateway-redis-ca/ca.crt}
{{- end }}
{{- with .Values.sidecar.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Whether the workers serve /metrics (config.observability.metrics, on by default). */}}
{{- define "llm-gateway.metricsOn" -}}
{{- $obs := default dict .Values.config.observability }}
{{- if or (not (hasKey $obs "metrics")) $obs.metrics }}true{{- end }}
{{- end }}

{{/* The collector's port (otel.endpoint, else the protocol's default), for the NetworkPolicy. */}}
{{- define "llm-gateway.otelPort" -}}
{{- $u := urlParse .Values.otel.endpoint }}
{{- if contains ":" $u.host }}{{- last (splitList ":" $u.host) }}
{{- else if eq $u.scheme "https" }}443
{{- else }}{{- ternary 4317 4318 (eq .Values.otel.protocol "grpc") }}
{{- end }}
{{- end }}

{{/* OpenTelemetry export (the standard OTEL_* variables) of the sidecar workers. The headers
only from a Secret. */}}
{{- define "llm-gateway.otelEnv" -}}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: K8S_NAMESPACE_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- {name: OTEL_SERVICE_NAME, value: {{ .Values.otel.serviceName | quote }}}
{{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" (printf "k8s.deployment.name=%s" (include "llm-gateway.fullname" .)) }}
{{- range $k, $v := .Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
- {name: OTEL_RESOURCE_ATTRIBUTES, value: {{ join "," $attrs | quote }}}
{{- with .Values.otel.endpoint }}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ . | quote }}}
- {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: {{ $.Values.otel.protocol | quote }}}
{{- end }}
{{- with .Values.otel.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.otel.headersSecret.key }}
{{- end }}
{{- with .Values.otel.tracesSampler }}
- {name: OTEL_TRACES_SAMPLER, value: {{ . | quote }}}
{{- end }}
{{- with .Values.otel.tracesSamplerArg }}
- {name: OTEL_TRACES_SAMPLER_ARG, value: {{ . | quote }}}
{{- end }}
{{- end }}

{{- define "llm-gateway.sidecarMounts" -}}
# The directory, not a subPath: ConfigMap and Secret updates reach the running sidecar.
- {name: config, mountPath: {{ include "llm-gateway.configDir" . }}, readOnly: true}
- {name: tmp, mountPath: /tmp}
- {name: sidecar-token, mountPath: {{ include "llm-gateway.callerTokenDir" . }}, readOnly: true}
{{- range $name, $key := .Values.providerKeys }}
- {name: provider-{{ $name }}, mountPath: {{ include "llm-gateway.keyDir" $ }}/providers/{{ $name }}, readOnly: true}
{{- end }}
{{- if .Values.staticTokens.existingSecret }}
- {name: static-tokens, mountPath: {{ include "llm-gateway.keyDir" . }}/static-tokens, readOnly: true}
{{- end }}
{{- if .Values.redis.external.tls.caSecret }}
- {name: redis-ca, mountPath: /etc/llm-gateway-redis-ca, readOnly: true}
{{- end }}
{{- include "llm-gateway.adminTlsMounts" . }}
{{- with .Values.sidecar.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The state keys: the sidecar containers and check-config only (never Envoy's, nor the
init container that writes Envoy's bootstrap). */}}
{{- define "llm-gateway.stateKeysMount" -}}
- {name: state-keys, mountPath: {{ include "llm-gateway.stateKeysDir" . }}, readOnly: true}
{{- end }}

{{- define "llm-gateway.envoyMounts" -}}
- {name: envoy-config, mountPath: {{ include "llm-gateway.envoyDir" . }}, readOnly: true}
{{- if .Values.envoy.tls.enabled }}
- {name: envoy-tls, mountPath: /etc/envoy-tls, readOnly: true}
{{- end }}
{{- if .Values.adminApi.httpPort }}
{{- include "llm-gateway.adminTlsMounts" . }}
{{- end }}
{{- end }}

{{/* The admin API's certificate (and client CA), where admin_api.tls says. */}}
{{- define "llm-gateway.adminTlsMounts" -}}
{{- if include "llm-gateway.adminTls" . }}
- {name: admin-tls, mountPath: {{ include "llm-gateway.adminTlsDir" . }}, readOnly: true}
{{- if .Values.adminApi.tls.clientCASecret }}
- {name: admin-ca, mountPath: {{ include "llm-gateway.adminCaDir" . }}, readOnly: true}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret volumes the sidecar mounts (provider keys, static tokens, Redis CA, Envoy TLS). */}}
{{- define "llm-gateway.secretVolumes" -}}
- name: sidecar-token
  secret:
    secretName: {{ include "llm-gateway.sidecarAuthSecret" . }}
    items: [{key: caller-token, path: caller-token}]
- name: state-keys
  secret:
    secretName: {{ include "llm-gateway.sidecarAuthSecret" . }}
    items: [{key: state-keys, path: state-keys}]
{{- range $name, $key := .Values.providerKeys }}
- name: provider-{{ $name }}
  secret:
    secretName: {{ $key.existingSecret }}
    items: [{key: {{ $key.key }}, path: {{ $key.key }}}]
{{- end }}
{{- with .Values.staticTokens.existingSecret }}
- name: static-tokens
  secret:
    secretName: {{ . }}
    items: [{key: {{ $.Values.staticTokens.key }}, path: {{ $.Values.staticTokens.key }}}]
{{- end }}
{{- with .Values.redis.external.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ . }}
    items: [{key: {{ $.Values.redis.external.tls.caKey }}, path: ca.crt}]
{{- end }}
{{- if .Values.envoy.tls.enabled }}
- name: envoy-tls
  secret:
    secretName: {{ .Values.envoy.tls.secretName }}
{{- end }}
{{- if include "llm-gateway.adminTls" . }}
- name: admin-tls
  secret:
    secretName: {{ .Values.adminApi.tls.secretName }}
    items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
{{- with .Values.adminApi.tls.clientCASecret }}
- name: admin-ca
  secret:
    secretName: {{ . }}
    items: [{key: {{ $.Values.adminApi.tls.clientCAKey }}, path: ca.crt}]
{{- end }}
{{- end }}
{{- with .Values.sidecar.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
